# shellcheck shell=bash
# The kernel and its modules inside an unpacked package tree, and the uncompressed
# vmlinux inside a bzImage. Sourced by build-node-image. Needs: log, die.

# The bzImage of an unpacked kernel package: /boot/vmlinuz-<release> (up to 6.12) or
# /usr/lib/modules/<release>/vmlinuz (sid's linux-binary-*).
find_kernel_in_tree() {
  local root="$1" f
  for f in "$root"/boot/vmlinuz-* "$root"/usr/lib/modules/*/vmlinuz "$root"/lib/modules/*/vmlinuz; do
    [ -f "$f" ] && { echo "$f"; return 0; }
  done
  return 1
}

# The release a kernel file's path names.
release_of_kernel_path() {
  case "$1" in
    */boot/vmlinuz-*) echo "${1##*/vmlinuz-}" ;;
    */modules/*/vmlinuz) basename "$(dirname "$1")" ;;
  esac
}

# lib/modules/<release> or usr/lib/modules/<release> (usrmerged packages) of a tree.
find_modules_in_tree() {
  local root="$1" release="$2" d
  for d in "$root/lib/modules/$release" "$root/usr/lib/modules/$release"; do
    [ -d "$d/kernel" ] && { echo "$d"; return 0; }
  done
  return 1
}

magic_of() { head -c "${2:-4}" "$1" | od -An -tx1 | tr -d ' \n'; }

is_elf() { [ "$(magic_of "$1")" = "7f454c46" ]; }

# A bzImage carries "HdrS" at offset 0x202 (the x86 boot protocol's header).
is_bzimage() { [ "$(tail -c +515 "$1" 2>/dev/null | head -c4)" = "HdrS" ]; }

# True when the ELF is whole: its section header table ends inside the file (a payload
# decompressed from a wrong offset or cut short fails this).
elf_complete() {
  local f="$1" off size num
  off="$(readelf -h "$f" 2>/dev/null | sed -n 's/^ *Start of section headers: *\([0-9]*\).*/\1/p')"
  size="$(readelf -h "$f" 2>/dev/null | sed -n 's/^ *Size of section headers: *\([0-9]*\).*/\1/p')"
  num="$(readelf -h "$f" 2>/dev/null | sed -n 's/^ *Number of section headers: *\([0-9]*\).*/\1/p')"
  [ -n "$off" ] && [ -n "$size" ] && [ -n "$num" ] && [ $((off + size * num)) -le "$(stat -c %s "$f")" ]
}

# QEMU boots a vmlinux through PVH only when it has the PVH entry note
# (XEN_ELFNOTE_PHYS32_ENTRY, type 18, owner Xen; CONFIG_PVH=y).
has_pvh_note() {
  readelf -n "$1" 2>/dev/null | grep -E '^[[:space:]]*Xen[[:space:]]+0x[0-9a-f]+[[:space:]].*(0x00000012|PHYS32_ENTRY)' >/dev/null
}

# Writes the uncompressed kernel of bzImage $1 to $2. The payload is found by its
# compressor's magic (XZ fd 37 7a 58 5a 00, ZSTD 28 b5 2f fd, gzip 1f 8b 08); the first
# offset that decompresses to a whole ELF is the kernel. Decompressors complain about the
# bzImage's bytes after the payload (and tail dies of SIGPIPE): only the result counts.
extract_vmlinux() {
  local bz="$1" out="$2" magic tool off
  for pair in 'xz -dc --single-stream:\xfd7zXZ\x00' 'zstd -dcq --memory=2048MB:\x28\xb5\x2f\xfd' 'gzip -dcq:\x1f\x8b\x08'; do
    tool="${pair%%:*}"
    magic="${pair#*:}"
    command -v "${tool%% *}" >/dev/null || continue
    for off in $(LC_ALL=C grep -obUaP "$magic" "$bz" | cut -d: -f1); do
      # shellcheck disable=SC2086
      $tool < <(tail -c +"$((off + 1))" "$bz" 2>/dev/null) >"$out" 2>/dev/null || true
      if is_elf "$out" && elf_complete "$out"; then
        echo "${tool%% *}"
        return 0
      fi
    done
  done
  rm -f "$out"
  return 1
}

# Decompresses every module in place (.ko.xz, .ko.zst, .ko.gz -> .ko): busybox's insmod
# in the initramfs and older kmods on the host cannot read compressed modules.
decompress_modules() {
  local dir="$1"
  find "$dir" -name '*.ko.xz' -print0 | xargs -0r xz -d || die "xz -d of the modules in $dir failed"
  if [ -n "$(find "$dir" -name '*.ko.zst' -print -quit)" ]; then
    command -v zstd >/dev/null || die "the modules are .ko.zst: install zstd (ci/setup does)"
    find "$dir" -name '*.ko.zst' -print0 | xargs -0r zstd -qd --rm || die "zstd -d of the modules in $dir failed"
  fi
  find "$dir" -name '*.ko.gz' -print0 | xargs -0r gzip -d || die "gzip -d of the modules in $dir failed"
}
