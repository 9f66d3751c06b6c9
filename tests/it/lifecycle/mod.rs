//! The gateway as a process: the binary's settings and logs, start-up reads of its files, the demo
//! mode, draining on shutdown, and panics that stay contained.

mod binary;
mod demo;
mod file_reads;
mod panics;
mod shutdown;
