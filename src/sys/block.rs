//! Block-device ioctls (BLKZNAME, FIFREEZE/FITHAW). Filled in by the detection/ZFS work.
