package goldclone

/*
#include "goldclone.h"
*/
import "C"

import "strings"

// DetectKind is what backs a detected path.
type DetectKind uint32

// Detection kinds, most capable first: the header's constants (generated from the library's list).
const (
	KindZFSDataset = DetectKind(C.GOLDCLONE_DETECT_KIND_ZFS_DATASET) // a mounted ZFS filesystem dataset
	KindZvol       = DetectKind(C.GOLDCLONE_DETECT_KIND_ZVOL)        // a filesystem on a ZFS volume
	KindBtrfs      = DetectKind(C.GOLDCLONE_DETECT_KIND_BTRFS)
	KindReflink    = DetectKind(C.GOLDCLONE_DETECT_KIND_REFLINK) // another filesystem where FICLONE works (XFS)
	KindPlain      = DetectKind(C.GOLDCLONE_DETECT_KIND_PLAIN)   // no cheaper way than copying the bytes
)

// String is the library's name for the kind ("zfs_dataset", "btrfs", ...), or "unknown".
func (k DetectKind) String() string {
	return C.GoString(C.goldclone_detect_kind_name(C.uint32_t(k)))
}

// Detection is what backs a path.
type Detection struct {
	Kind DetectKind
	// Path is the path canonicalized (absolute, symlinks resolved).
	Path        string
	FSType      string
	MountPoint  string
	MountSource string
	// Dataset and Pool are set on ZFS (datasets and zvols); Device for a zvol.
	Dataset, Pool, Device string
	// Reflink: whether FICLONE works there; ReflinkKnown false if it could not be probed.
	Reflink, ReflinkKnown bool
	// On btrfs: whether the path is a subvolume root, and the id of its subvolume.
	BtrfsSubvolume   bool
	BtrfsSubvolumeID uint64
}

// Detect finds out what backs path, which must exist.
func Detect(path string) (*Detection, error) {
	const op = "Detect"
	cpath, err := cString(op, "path", path, ResultInvalidArgument)
	if err != nil {
		return nil, err
	}
	defer free(cpath)
	var d *C.goldclone_detection
	if err := call(op, func() C.goldclone_result { return C.goldclone_detect(cpath, &d) }); err != nil {
		return nil, err
	}
	defer C.goldclone_detection_free(d)
	var kind C.goldclone_detect_kind
	var reflink C.int32_t
	if err := call(op, func() C.goldclone_result { return C.goldclone_detection_kind(d, &kind) }); err != nil {
		return nil, err
	}
	if err := call(op, func() C.goldclone_result { return C.goldclone_detection_reflink(d, &reflink) }); err != nil {
		return nil, err
	}
	out := &Detection{Kind: DetectKind(kind), Reflink: reflink == 1, ReflinkKnown: reflink >= 0}
	fields := []struct {
		f   C.uint32_t
		dst *string
	}{
		{C.GOLDCLONE_DETECTION_FIELD_PATH, &out.Path},
		{C.GOLDCLONE_DETECTION_FIELD_FS_TYPE, &out.FSType},
		{C.GOLDCLONE_DETECTION_FIELD_MOUNT_POINT, &out.MountPoint},
		{C.GOLDCLONE_DETECTION_FIELD_MOUNT_SOURCE, &out.MountSource},
		{C.GOLDCLONE_DETECTION_FIELD_DATASET, &out.Dataset},
		{C.GOLDCLONE_DETECTION_FIELD_POOL, &out.Pool},
		{C.GOLDCLONE_DETECTION_FIELD_DEVICE, &out.Device},
	}
	for _, fl := range fields {
		s, err := readString(op, 256, func(b *C.char, n C.size_t, o *C.size_t) C.goldclone_result {
			return C.goldclone_detection_string(d, fl.f, b, n, o)
		})
		switch {
		case err == nil:
			*fl.dst = s
		case !isCode(err, ResultNotFound):
			return nil, err
		}
	}
	if out.Kind == KindBtrfs {
		var sub C.bool
		var id C.uint64_t
		if err := call(op, func() C.goldclone_result { return C.goldclone_detection_btrfs(d, &sub, &id) }); err != nil {
			return nil, err
		}
		out.BtrfsSubvolume, out.BtrfsSubvolumeID = bool(sub), uint64(id)
	}
	return out, nil
}

// DetectZFSPool returns the ZFS pool behind path (a ZFS dataset, or a filesystem on a zvol);
// ok is false when path is not on ZFS or cannot be detected.
func DetectZFSPool(path string) (pool string, ok bool) {
	const op = "DetectZFSPool"
	cpath, err := cString(op, "path", path, ResultInvalidArgument)
	if err != nil {
		return "", false
	}
	defer free(cpath)
	pool, err = readString(op, 256, func(b *C.char, n C.size_t, o *C.size_t) C.goldclone_result {
		return C.goldclone_zfs_pool(cpath, b, n, o)
	})
	return pool, err == nil
}

// DetectZFSParent returns the dataset goldclone puts its datasets under for a cache root at
// path: for a ZFS filesystem, the dataset mounted there; for an XFS on a zvol, the zvol's
// parent dataset (the volumes go beside it, under <parent>/<zvol>.goldclone). That is what the
// service's DetectZFSPool result was used for: the parent of its zvols. ok is false off ZFS.
func DetectZFSParent(path string) (dataset string, ok bool) {
	d, err := Detect(path)
	if err != nil || d.Dataset == "" {
		return "", false
	}
	switch d.Kind {
	case KindZFSDataset:
		return d.Dataset, true
	case KindZvol:
		i := strings.LastIndexByte(d.Dataset, '/')
		if i <= 0 {
			return "", false
		}
		return d.Dataset[:i], true
	}
	return "", false
}
