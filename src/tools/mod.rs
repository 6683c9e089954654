//! Programs that come with peerpool: the demo and the load generator.

pub mod demo;
pub mod load;
