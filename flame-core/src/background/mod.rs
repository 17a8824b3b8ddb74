//! Work that outlives its caller and fan-out, over the same pools as every call (issue 16):
//! [`Flame::spawn`](crate::Flame::spawn) (a [`CallHandle`]), [`Flame::map`](crate::Flame::map)
//! (bounded parallel fan-out as a stream), [`Flame::place`](crate::Flame::place) (a long-lived
//! task on a runner) and [`Flame::cast`](crate::Flame::cast) (fire and forget, acknowledged).

mod cast;
mod map;
mod place;
mod spawn;

pub use cast::{CastError, CastErrorHook, CastHandle};
pub use map::MapOptions;
pub use place::{PlaceOptions, PlacedTask, DEFAULT_LIFETIME};
pub use spawn::CallHandle;
