//! Opaque handles, validated without ever dereferencing the caller's pointer.
//!
//! A handle is the address of a small heap allocation (a *shell*) that the library owns; the
//! object behind it lives in a process-wide registry keyed by that address. Every call looks the
//! address up: an address that is not registered (freed, never issued, garbage) or registered as
//! another type is `GOLDCLONE_RESULT_INVALID_HANDLE`, so a use after free is reported instead of
//! reading freed memory, even under AddressSanitizer.
//!
//! Freeing unregisters the object and moves its shell to a quarantine of the last
//! [`QUARANTINE`] freed shells, so the allocator cannot hand the same address to a new handle
//! while a stale copy is likely still around. Beyond that window a stale pointer may alias a newer
//! handle of the same type: using a freed handle is a caller bug that the library reports when it
//! can, not a supported operation.
//!
//! Objects are reference-counted: a call takes its own reference under the registry lock, so a
//! handle freed by one thread while another thread's call on it is running stays alive until that
//! call returns.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use super::error::{goldclone_result, Failure};
use crate::copy::CancelToken;
use crate::detect::Detection;
use crate::golden::{Cache, GcReport, GoldenInfo};

/// Freed shells kept allocated.
const QUARANTINE: usize = 4096;

/// What a handle refers to.
#[derive(Clone)]
pub(crate) enum Object {
    Cache(Arc<Cache>),
    Cancel(CancelToken),
    Detection(Arc<Detection>),
    Info(Arc<GoldenInfo>),
    GcReport(Arc<GcReport>),
}

impl Object {
    fn type_name(&self) -> &'static str {
        match self {
            Object::Cache(_) => "goldclone_cache",
            Object::Cancel(_) => "goldclone_cancel",
            Object::Detection(_) => "goldclone_detection",
            Object::Info(_) => "goldclone_info",
            Object::GcReport(_) => "goldclone_gc_report",
        }
    }
}

/// The allocation whose address is the handle. Never read; it only reserves the address.
struct Shell {
    _reserved: u64,
}

#[derive(Default)]
struct Registry {
    live: HashMap<usize, (Object, Box<Shell>)>,
    quarantine: VecDeque<Box<Shell>>,
}

static REGISTRY: LazyLock<RwLock<Registry>> = LazyLock::new(Default::default);

/// Register `obj`; the returned pointer is its handle.
pub(crate) fn register<T>(obj: Object) -> *mut T {
    let shell = Box::new(Shell { _reserved: 0 });
    let addr = &*shell as *const Shell as usize;
    let mut reg = REGISTRY.write().unwrap_or_else(PoisonError::into_inner);
    reg.live.insert(addr, (obj, shell));
    addr as *mut T
}

fn invalid(type_name: &str, found: Option<&Object>) -> Failure {
    let message = match found {
        Some(o) => format!("handle is a {}, not a {type_name}", o.type_name()),
        None => format!(
            "{type_name} handle is not live (already freed, or not returned by this library)"
        ),
    };
    Failure::new(goldclone_result::InvalidHandle, message)
}

/// Look a handle up; `pick` accepts the right variant.
pub(crate) fn get<T, R>(
    p: *const T,
    type_name: &str,
    pick: impl FnOnce(&Object) -> Option<R>,
) -> Result<R, Failure> {
    if p.is_null() {
        return Err(Failure::null(type_name));
    }
    let reg = REGISTRY.read().unwrap_or_else(PoisonError::into_inner);
    match reg.live.get(&(p as usize)) {
        Some((o, _)) => pick(o).ok_or_else(|| invalid(type_name, Some(o))),
        None => Err(invalid(type_name, None)),
    }
}

/// Free a handle of the type `pick` accepts. NULL is a no-op.
pub(crate) fn free<T>(
    p: *const T,
    type_name: &str,
    pick: impl Fn(&Object) -> bool,
) -> Result<(), Failure> {
    if p.is_null() {
        return Ok(());
    }
    let removed = {
        let mut reg = REGISTRY.write().unwrap_or_else(PoisonError::into_inner);
        let addr = p as usize;
        match reg.live.get(&addr) {
            Some((o, _)) if pick(o) => {}
            found => return Err(invalid(type_name, found.map(|(o, _)| o))),
        }
        let (obj, shell) = reg.live.remove(&addr).expect("checked above");
        reg.quarantine.push_back(shell);
        if reg.quarantine.len() > QUARANTINE {
            reg.quarantine.pop_front();
        }
        obj
    };
    // Dropped outside the lock: the last reference to a cache may do work on drop.
    drop(removed);
    Ok(())
}

/// Number of live handles of all types: a leak check for tests (0 once everything is freed).
#[no_mangle]
pub extern "C" fn goldclone_debug_live_handles() -> usize {
    std::panic::catch_unwind(|| REGISTRY.read().unwrap_or_else(PoisonError::into_inner).live.len())
        .unwrap_or(0)
}
