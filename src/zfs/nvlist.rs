//! Owned and borrowed nvlists over the run-time loaded libnvpair.
//!
//! libzfs_core takes its arguments and returns per-name errors and results as nvlists. This is
//! the only module that touches `nvlist_t` pointers: [`NvList`] owns one (freed on drop),
//! [`NvListRef`] borrows one that lives inside another nvlist, and [`NvValue`] is the decoded value
//! of one pair. Only the error-returning `nvlist_*` calls are used; the `fnvlist_*` ones abort the
//! process on allocation failure.

use std::ffi::{CStr, CString};
use std::io;
use std::marker::PhantomData;
use std::ptr::{self, NonNull};

use super::bindings::nvpair::{self as sys, nvlist_t, nvpair_t, LibNvpair};

/// An nvlist this process owns; freed with `nvlist_free` on drop.
pub struct NvList {
    ptr: NonNull<nvlist_t>,
    lib: &'static LibNvpair,
}

// SAFETY: an nvlist is plain heap memory with no thread affinity; libnvpair keeps no global state
// for it. `NvList` is not `Sync`: mutation goes through `&mut self` only.
unsafe impl Send for NvList {}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(ret))
    }
}

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

impl NvList {
    /// A new empty nvlist with unique names (a later add of the same name replaces the value).
    pub fn new(lib: &'static LibNvpair) -> io::Result<Self> {
        let mut raw: *mut nvlist_t = ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; NV_UNIQUE_NAME and KM_SLEEP (0) are the flags
        // libzfs_core itself uses.
        check(unsafe { lib.nvlist_alloc(&mut raw, sys::NV_UNIQUE_NAME, 0) })?;
        let ptr = NonNull::new(raw).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(NvList { ptr, lib })
    }

    /// Take ownership of an nvlist libzfs_core allocated for us (result and error lists).
    ///
    /// # Safety
    /// `raw` is null or a valid nvlist allocated by `lib` that nothing else frees.
    pub unsafe fn from_raw(lib: &'static LibNvpair, raw: *mut nvlist_t) -> Option<Self> {
        NonNull::new(raw).map(|ptr| NvList { ptr, lib })
    }

    /// The raw pointer, for passing to libzfs_core. Valid while `self` lives; libzfs_core only
    /// reads argument lists.
    pub fn as_ptr(&self) -> *mut nvlist_t {
        self.ptr.as_ptr()
    }

    /// A borrowed view for reading.
    pub fn view(&self) -> NvListRef<'_> {
        NvListRef { ptr: self.ptr, lib: self.lib, _owner: PhantomData }
    }

    /// Add a name with no value (`DATA_TYPE_BOOLEAN`): how libzfs_core spells set membership.
    pub fn add_boolean(&mut self, name: &str) -> io::Result<()> {
        let name = cstring(name)?;
        // SAFETY: `self.ptr` is a live nvlist we own; `name` is NUL-terminated and copied in.
        check(unsafe { self.lib.nvlist_add_boolean(self.as_ptr(), name.as_ptr()) })
    }

    /// Add a string value.
    pub fn add_string(&mut self, name: &str, value: &str) -> io::Result<()> {
        let (name, value) = (cstring(name)?, cstring(value)?);
        // SAFETY: as for `add_boolean`; libnvpair copies both strings.
        check(unsafe { self.lib.nvlist_add_string(self.as_ptr(), name.as_ptr(), value.as_ptr()) })
    }

    /// Add an unsigned 64-bit value (numeric and index ZFS properties).
    pub fn add_uint64(&mut self, name: &str, value: u64) -> io::Result<()> {
        let name = cstring(name)?;
        // SAFETY: as for `add_boolean`.
        check(unsafe { self.lib.nvlist_add_uint64(self.as_ptr(), name.as_ptr(), value) })
    }

    /// Add a boolean value (`DATA_TYPE_BOOLEAN_VALUE`).
    pub fn add_bool(&mut self, name: &str, value: bool) -> io::Result<()> {
        let name = cstring(name)?;
        let value = if value { sys::B_TRUE } else { sys::B_FALSE };
        // SAFETY: as for `add_boolean`.
        check(unsafe { self.lib.nvlist_add_boolean_value(self.as_ptr(), name.as_ptr(), value) })
    }

    /// Add a copy of another nvlist.
    pub fn add_nvlist(&mut self, name: &str, value: &NvList) -> io::Result<()> {
        let name = cstring(name)?;
        // SAFETY: both lists are live; libnvpair deep-copies `value`.
        check(unsafe { self.lib.nvlist_add_nvlist(self.as_ptr(), name.as_ptr(), value.as_ptr()) })
    }

    /// Add an array of strings.
    pub fn add_string_array(&mut self, name: &str, values: &[&str]) -> io::Result<()> {
        let name = cstring(name)?;
        let owned = values.iter().map(|v| cstring(v)).collect::<io::Result<Vec<_>>>()?;
        let ptrs: Vec<*const libc::c_char> = owned.iter().map(|c| c.as_ptr()).collect();
        let len = sys::uint_t::try_from(ptrs.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
        // SAFETY: `ptrs` holds `len` pointers to NUL-terminated strings that outlive the call;
        // libnvpair copies them.
        check(unsafe {
            self.lib.nvlist_add_string_array(self.as_ptr(), name.as_ptr(), ptrs.as_ptr(), len)
        })
    }
}

impl Drop for NvList {
    fn drop(&mut self) {
        // SAFETY: we own the list (allocated by us or handed over by `from_raw`) and free it once.
        unsafe { self.lib.nvlist_free(self.ptr.as_ptr()) }
    }
}

impl std::fmt::Debug for NvList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.view().fmt(f)
    }
}

/// A read-only view of an nvlist owned by something that outlives `'a`.
#[derive(Clone, Copy)]
pub struct NvListRef<'a> {
    ptr: NonNull<nvlist_t>,
    lib: &'static LibNvpair,
    _owner: PhantomData<&'a NvList>,
}

/// The decoded value of one nvpair. Types goldclone never receives are reported by type number.
#[derive(Debug, Clone, Copy)]
pub enum NvValue<'a> {
    /// A name with no value (set membership).
    Boolean,
    /// `DATA_TYPE_BOOLEAN_VALUE`.
    Bool(bool),
    /// `DATA_TYPE_INT32`: per-name errno in libzfs_core error lists.
    Int32(i32),
    /// `DATA_TYPE_INT64`.
    Int64(i64),
    /// `DATA_TYPE_UINT64`.
    Uint64(u64),
    /// `DATA_TYPE_STRING`.
    String(&'a CStr),
    /// A nested nvlist.
    List(NvListRef<'a>),
    /// Any other type (arrays, bytes, ...): nothing goldclone reads.
    Other,
}

impl<'a> NvListRef<'a> {
    /// Iterate over the pairs in insertion order.
    pub fn iter(&self) -> NvIter<'a> {
        NvIter { list: *self, cur: ptr::null_mut() }
    }

    /// The value of the first pair called `name`.
    pub fn get(&self, name: &str) -> Option<NvValue<'a>> {
        self.iter().find(|(n, _)| n.to_bytes() == name.as_bytes()).map(|(_, v)| v)
    }

    fn decode(&self, pair: *mut nvpair_t) -> NvValue<'a> {
        let lib = self.lib;
        // SAFETY (all calls below): `pair` came from `nvlist_next_nvpair` on a list that lives
        // for 'a; each nvpair_value_* call is matched to the type nvpair_type reported and
        // writes one value of that type into a local.
        let ty = unsafe { lib.nvpair_type(pair) };
        match ty {
            sys::DATA_TYPE_BOOLEAN => NvValue::Boolean,
            sys::DATA_TYPE_BOOLEAN_VALUE => {
                let mut v = sys::B_FALSE;
                // SAFETY: see above.
                match unsafe { lib.nvpair_value_boolean_value(pair, &mut v) } {
                    0 => NvValue::Bool(v != sys::B_FALSE),
                    _ => NvValue::Other,
                }
            }
            sys::DATA_TYPE_INT32 => {
                let mut v = 0i32;
                // SAFETY: see above.
                match unsafe { lib.nvpair_value_int32(pair, &mut v) } {
                    0 => NvValue::Int32(v),
                    _ => NvValue::Other,
                }
            }
            sys::DATA_TYPE_INT64 => {
                let mut v = 0i64;
                // SAFETY: see above.
                match unsafe { lib.nvpair_value_int64(pair, &mut v) } {
                    0 => NvValue::Int64(v),
                    _ => NvValue::Other,
                }
            }
            sys::DATA_TYPE_UINT64 => {
                let mut v = 0u64;
                // SAFETY: see above.
                match unsafe { lib.nvpair_value_uint64(pair, &mut v) } {
                    0 => NvValue::Uint64(v),
                    _ => NvValue::Other,
                }
            }
            sys::DATA_TYPE_STRING => {
                let mut v: *const libc::c_char = ptr::null();
                // SAFETY: see above; the string lives inside the pair, so for 'a.
                match unsafe { lib.nvpair_value_string(pair, &mut v) } {
                    // SAFETY: libnvpair returned a NUL-terminated string owned by the list.
                    0 if !v.is_null() => NvValue::String(unsafe { CStr::from_ptr(v) }),
                    _ => NvValue::Other,
                }
            }
            sys::DATA_TYPE_NVLIST => {
                let mut v: *mut nvlist_t = ptr::null_mut();
                // SAFETY: see above; the nested list is owned by the outer one, so lives for 'a.
                match unsafe { lib.nvpair_value_nvlist(pair, &mut v) } {
                    0 => match NonNull::new(v) {
                        Some(ptr) => NvValue::List(NvListRef { ptr, lib, _owner: PhantomData }),
                        None => NvValue::Other,
                    },
                    _ => NvValue::Other,
                }
            }
            _ => NvValue::Other,
        }
    }
}

impl std::fmt::Debug for NvListRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Iterator over `(name, value)` pairs of an nvlist.
pub struct NvIter<'a> {
    list: NvListRef<'a>,
    cur: *mut nvpair_t,
}

impl<'a> Iterator for NvIter<'a> {
    type Item = (&'a CStr, NvValue<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        // SAFETY: the list is live for 'a; `cur` is null (start) or the pair this function
        // returned last time from the same list.
        let next = unsafe { self.list.lib.nvlist_next_nvpair(self.list.ptr.as_ptr(), self.cur) };
        if next.is_null() {
            return None;
        }
        self.cur = next;
        // SAFETY: `next` is a live pair; its name is a NUL-terminated string stored in the pair.
        let name = unsafe { CStr::from_ptr(self.list.lib.nvpair_name(next)) };
        Some((name, self.list.decode(next)))
    }
}
