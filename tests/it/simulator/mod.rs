//! The simulated Graph and Entra ID, on their own and through the gateway: what they answer, what
//! they record, and how closely they follow the real services.

pub(crate) mod entra;
mod graph;
pub(crate) mod graph_contract;
