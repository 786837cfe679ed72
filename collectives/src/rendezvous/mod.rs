//! Rank 0's rendezvous: where ranks find each other, meet in collectives
//! that cross hosts, and queue for locks. A small request/reply protocol
//! over TCP ([`wire`], sans IO), served by rank 0 ([`server`]), asked by
//! every rank ([`client`]).

pub mod client;
pub mod server;
pub mod wire;

pub use client::Client;
pub use server::{Limits, Server, Service};
