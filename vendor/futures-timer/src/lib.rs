//! A general purpose crate for working with timeouts and delays with futures.
//!
//! # Examples
//!
//! ```no_run
//! # #[async_std::main]
//! # async fn main() {
//! use std::time::Duration;
//! use futures_timer::Delay;
//!
//! let now = Delay::new(Duration::from_secs(3)).await;
//! println!("waited for 3 secs");
//! # }
//! ```

#![deny(missing_docs)]
#![warn(missing_debug_implementations)]

#[cfg(not(all(target_arch = "wasm32", feature = "wasm-bindgen")))]
mod native;
#[cfg(all(target_arch = "wasm32", feature = "wasm-bindgen"))]
mod wasm;

#[cfg(not(all(target_arch = "wasm32", feature = "wasm-bindgen")))]
pub use self::native::{global_thread_running, stop_global_thread, Delay};
#[cfg(all(target_arch = "wasm32", feature = "wasm-bindgen"))]
pub use self::wasm::Delay;

/// On wasm the browser's timers run every `Delay`: there is no helper thread to stop.
#[cfg(all(target_arch = "wasm32", feature = "wasm-bindgen"))]
pub fn stop_global_thread() -> bool {
    true
}

/// On wasm there is never a helper thread.
#[cfg(all(target_arch = "wasm32", feature = "wasm-bindgen"))]
pub fn global_thread_running() -> bool {
    false
}
