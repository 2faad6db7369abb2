//! A concurrent longest-prefix-match forwarding table for IPv4 and IPv6.
//!
//! [`Fib`] maps [`Prefix`]es to small next-hop values (adjacency indices). It is built for a
//! packet switch: lookups run on many threads without locks, while one control-plane thread
//! changes routes and publishes them.
//!
//! ```
//! use fib::{Fib, Ipv4Prefix};
//! use std::net::Ipv4Addr;
//!
//! let mut table = Fib::<Ipv4Addr>::new();
//! let reader = table.reader(); // Send + Clone: give one to each worker
//! table.insert("10.0.0.0/8".parse::<Ipv4Prefix>().unwrap(), 1).unwrap();
//! table.insert("10.1.0.0/16".parse::<Ipv4Prefix>().unwrap(), 2).unwrap();
//! assert_eq!(reader.lookup(Ipv4Addr::new(10, 1, 2, 3)), None); // staged, not yet published
//! table.publish();
//! assert_eq!(reader.lookup(Ipv4Addr::new(10, 1, 2, 3)), Some(2));
//! assert_eq!(reader.lookup(Ipv4Addr::new(10, 2, 0, 1)), Some(1));
//! ```
//!
//! Structure and guarantees are described in the `table` and `chunk` modules; route files are
//! read by [`routes`].

mod chunk;
#[cfg(feature = "cli")]
pub mod compare;
mod prefix;
pub mod routes;
mod table;
#[cfg(feature = "cli")]
pub mod testdata;

pub use chunk::MAX_NEXT_HOP;
pub use prefix::{Address, AnyPrefix, Ipv4Prefix, Ipv6Prefix, Prefix, PrefixError};
pub use table::{Fib, FibError, FibReader, FibView, MemoryUse};
