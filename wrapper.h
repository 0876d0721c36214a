/*
 * Input to bindgen for src/zfs/bindings.rs (cargo feature `buildtime-bindgen`).
 *
 * Only the public OpenZFS user-space headers: libzfs_core (dataset operations as ioctls on
 * /dev/zfs) and libnvpair (the argument/result encoding). Both live in /usr/include/libzfs, with
 * the Solaris compatibility headers in /usr/include/libspl (Debian/Ubuntu libzfslinux-dev).
 */
#include <libnvpair.h>
#include <libzfs_core.h>
