//! The on-behalf-of exchange at Entra ID: the form, the cache, the retry rules, the guards against
//! hostile tokens and answers, and secrets that reach nothing but Entra ID.

mod exchange;
mod guard;
mod secrets;
mod simulated_entra;
