#!/usr/bin/env python3
"""Unpacks Debian packages into a prefix without dpkg (bench/gpu/run.sh on a machine that
may have none): a .deb is an ar archive whose data.tar.{xz,gz,zst,bz2} holds the files.

    python3 bench/gpu/debx.py PREFIX FILE.deb ...

Only regular files, directories and symbolic links are written, and only inside PREFIX
(members with absolute paths or '..' are refused). Exit status 1 if any package failed.
"""
import io
import os
import sys
import tarfile


def ar_members(data):
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive")
    off = 8
    while off + 60 <= len(data):
        hdr = data[off:off + 60]
        name = hdr[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(hdr[48:58].decode("ascii").strip())
        yield name, data[off + 60:off + 60 + size]
        off += 60 + size + (size & 1)


def open_tar(name, blob):
    if name.endswith(".zst"):
        try:
            import zstandard  # noqa: F401  (not in the standard library)
        except ImportError:
            raise ValueError("%s is zstd-compressed and the zstandard module is missing" % name)
        import zstandard
        blob = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
        return tarfile.open(fileobj=io.BytesIO(blob), mode="r:")
    return tarfile.open(fileobj=io.BytesIO(blob), mode="r:*")


def safe(prefix, member_name):
    p = os.path.normpath(os.path.join(prefix, member_name))
    if not (p == prefix or p.startswith(prefix + os.sep)):
        raise ValueError("member %r would leave the prefix" % member_name)
    return p


def extract(deb, prefix):
    with open(deb, "rb") as fh:
        data = fh.read()
    for name, blob in ar_members(data):
        if not name.startswith("data.tar"):
            continue
        with open_tar(name, blob) as tf:
            for m in tf.getmembers():
                dst = safe(prefix, m.name)
                if m.isdir():
                    os.makedirs(dst, exist_ok=True)
                elif m.issym():
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    if os.path.lexists(dst):
                        os.unlink(dst)
                    os.symlink(m.linkname, dst)
                elif m.isfile():
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    src = tf.extractfile(m)
                    if os.path.lexists(dst):
                        os.unlink(dst)
                    with open(dst, "wb") as out:
                        out.write(src.read())
                    os.chmod(dst, m.mode & 0o755)
        return
    raise ValueError("no data.tar member")


def main(argv):
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[2].strip())
        return 2
    prefix = os.path.abspath(argv[1])
    os.makedirs(prefix, exist_ok=True)
    bad = 0
    for deb in argv[2:]:
        try:
            extract(deb, prefix)
        except (OSError, ValueError, tarfile.TarError) as e:
            print("debx.py: %s: %s" % (deb, e), file=sys.stderr)
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
