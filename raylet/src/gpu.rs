//! How many GPUs this node has.
//!
//! # Why the guard
//!
//! `cudarc` is built with `dynamic-loading`, so a raylet binary starts on hosts without
//! the NVIDIA driver; it opens `libcuda` lazily, at the first CUDA call, and **panics** if
//! the library cannot be found. A node without a GPU (a laptop, CI, a CPU-only host or
//! container) is normal, not an error, so detection asks first:
//! [`cudarc::driver::sys::is_culib_present`] tries the very file names cudarc itself would
//! open, and only when one opens do we call `cuInit` and `cuDeviceGetCount`. Those calls
//! also run inside `catch_unwind` in case cudarc panics anyway (say, a library that opens
//! but lacks a symbol). Every failure becomes zero GPUs with the reason in
//! [`GpuDetection::source`]; detection never panics and never fails the raylet.
//!
//! `catch_unwind` cannot help in a binary built with `panic = "abort"`; there the first
//! guard is the one that matters. A panic that is caught is still printed by the panic
//! hook; the raylet carries on.
//!
//! The count is of the devices the driver shows this process, so it respects a
//! `CUDA_VISIBLE_DEVICES` set on the raylet itself.

use std::panic::{self, AssertUnwindSafe};

/// How many GPUs this node has, and how we know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuDetection {
    /// Number of GPUs; zero when there are none or detection failed.
    pub count: u32,
    /// Where the count came from, or why it is zero: `"override"`, `"cuda driver"`,
    /// `"no libcuda found"`, or a driver error.
    pub source: String,
}

/// Counts GPUs through the CUDA driver, as zero when there is no driver or no device.
///
/// Never panics. `cuInit` can take a second or more on some hosts, so call this once at
/// startup.
pub fn detect_gpus() -> GpuDetection {
    // `AssertUnwindSafe`: the closure shares no state with the caller, so nothing can be
    // seen half-updated after a panic.
    let probe = panic::catch_unwind(AssertUnwindSafe(probe_driver))
        .unwrap_or_else(|payload| Probe::Panicked(panic_message(payload.as_ref())));
    interpret(probe)
}

/// The raylet's `--num-gpus N`: `Some(n)` is taken as is, without touching CUDA (for
/// hosts where detection is wrong, or to hide GPUs); `None` detects.
pub fn detect_gpus_with_override(num_gpus: Option<u32>) -> GpuDetection {
    match num_gpus {
        Some(count) => GpuDetection {
            count,
            source: "override".to_string(),
        },
        None => detect_gpus(),
    }
}

/// What asking the driver found, before it is turned into a count.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Probe {
    /// No candidate `libcuda` file could be opened.
    NoLibrary,
    /// `cuInit` failed (for example no device, or a stub library).
    InitFailed(String),
    /// `cuDeviceGetCount` failed.
    CountFailed(String),
    /// The driver's count.
    Count(i32),
    /// cudarc panicked despite the library check.
    Panicked(String),
}

/// Asks the CUDA driver; the only part of this module with side effects.
fn probe_driver() -> Probe {
    // SAFETY: opening a shared library runs its initialisers; `libcuda` is the NVIDIA
    // driver library, meant to be loaded this way, and the handle is closed again before
    // this returns. This is the check that keeps the calls below from panicking.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Probe::NoLibrary;
    }
    // `{:?}` of the raw code (e.g. `CUDA_ERROR_NO_DEVICE`) rather than `Display`, which
    // would call back into the driver for a description.
    if let Err(error) = cudarc::driver::result::init() {
        return Probe::InitFailed(format!("{:?}", error.0));
    }
    match cudarc::driver::result::device::get_count() {
        Ok(count) => Probe::Count(count),
        Err(error) => Probe::CountFailed(format!("{:?}", error.0)),
    }
}

/// Turns what the driver said into a count; pure, so every case is testable without a GPU.
fn interpret(probe: Probe) -> GpuDetection {
    let (count, source) = match probe {
        Probe::NoLibrary => (0, "no libcuda found".to_string()),
        Probe::InitFailed(code) => (0, format!("cuda driver: cuInit failed ({code})")),
        Probe::CountFailed(code) => (0, format!("cuda driver: cuDeviceGetCount failed ({code})")),
        Probe::Count(count) => match u32::try_from(count) {
            Ok(count) => (count, "cuda driver".to_string()),
            Err(_) => (
                0,
                format!("cuda driver: reported a negative device count ({count})"),
            ),
        },
        Probe::Panicked(message) => (0, format!("cuda driver: cudarc panicked ({message})")),
    };
    GpuDetection { count, source }
}

/// The text of a panic payload (`panic!` gives a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_never_panics_and_no_driver_means_zero() {
        let detection = detect_gpus();
        // SAFETY: as in `probe_driver`.
        let has_library = unsafe { cudarc::driver::sys::is_culib_present() };
        if !has_library {
            assert_eq!(detection.count, 0);
            assert_eq!(detection.source, "no libcuda found");
        }
        // With a driver (a GPU host), any count is right; the point is that we got here.
    }

    #[test]
    fn override_wins_without_touching_cuda() {
        for count in [0, 1, 8] {
            assert_eq!(
                detect_gpus_with_override(Some(count)),
                GpuDetection {
                    count,
                    source: "override".to_string()
                }
            );
        }
    }

    #[test]
    fn no_override_detects() {
        assert_eq!(detect_gpus_with_override(None), detect_gpus());
    }

    #[test]
    fn every_failure_is_zero_gpus_with_a_reason() {
        let failures = [
            (Probe::NoLibrary, "no libcuda found"),
            (
                Probe::InitFailed("CUDA_ERROR_NO_DEVICE".to_string()),
                "CUDA_ERROR_NO_DEVICE",
            ),
            (
                Probe::CountFailed("CUDA_ERROR_UNKNOWN".to_string()),
                "cuDeviceGetCount",
            ),
            (Probe::Count(-1), "negative"),
            (
                Probe::Panicked("Missing symbol cuInit".to_string()),
                "cuInit",
            ),
        ];
        for (probe, reason) in failures {
            let detection = interpret(probe);
            assert_eq!(detection.count, 0);
            assert!(detection.source.contains(reason), "{}", detection.source);
        }
        assert_eq!(
            interpret(Probe::Count(4)),
            GpuDetection {
                count: 4,
                source: "cuda driver".to_string()
            }
        );
    }

    #[test]
    fn panic_payloads_become_text() {
        let caught = panic::catch_unwind(|| panic!("boom {}", 1)).expect_err("panics");
        assert_eq!(panic_message(caught.as_ref()), "boom 1");
        let caught = panic::catch_unwind(|| panic!("static")).expect_err("panics");
        assert_eq!(panic_message(caught.as_ref()), "static");
    }
}
