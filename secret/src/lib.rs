//! The fleet's signing secret (`REGATTA_SECRET`), shared by `regatta serve`
//! and `regatta-worker`.
//!
//! Anyone holding it can seal work orders and events the fleet trusts, so
//! both binaries read it the same way ([`load`]), refuse the weak and the
//! placeholder ones ([`check`]), and keep it from the other processes of
//! their user, sessions included ([`privacy`]).

pub mod error;
pub mod load;
pub mod privacy;

pub use error::Error;
pub use load::{check, load, FleetSecret, Loaded, MIN_LEN};
pub use privacy::{keep_memory_private, scrub_environment, FLEET_VARIABLES};
