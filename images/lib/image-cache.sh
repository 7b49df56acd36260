# shellcheck shell=bash
# The image cache: which images were used last, and pruning the others. Sourced by
# build-node-image. Needs: CACHE, log, die_input.
#
# Every image directory holds `last-used` (touched on every build and cache hit) and
# `in-use`, on which the harness holds a shared flock while it runs VMs from the image
# (harness/src/provider/qemu/image.rs): pruning skips an image whose lock it cannot take.

mark_used() { touch "$1/last-used"; }

# Image directories, most recently used first: "mtime dir" lines.
images_by_use() {
  local m dir
  for m in "$CACHE"/*/manifest; do
    [ -f "$m" ] || continue
    dir="$(dirname "$m")"
    printf '%s %s\n' "$(stat -c %Y "$dir/last-used" 2>/dev/null || stat -c %Y "$m")" "$dir"
  done | sort -rn
}

# Removes the images beyond the bound, least recently used first: keep the KEEP most
# recent ones, or the most recent ones whose sizes add up to at most KEEP_BYTES. Leftovers
# of interrupted builds (.build-*) go too: under the cache lock nothing is building.
prune_images() {
  local keep="$1" keep_bytes="$2"
  [ -d "$CACHE" ] || { log "no image cache at $CACHE: nothing to prune"; echo "freed 0 bytes"; return 0; }
  exec 9>"$CACHE/.lock"
  flock 9
  local n=0 over=0 kept_bytes=0 freed=0 removed=0 used dir size release
  while read -r used dir; do
    size="$(du -sb "$dir" | cut -f1)"
    n=$((n + 1))
    # Least recently used goes first: once one image is beyond the bound, so are all older.
    if [ "$over" = 0 ] && { { [ -n "$keep" ] && [ "$n" -le "$keep" ]; } \
      || { [ -n "$keep_bytes" ] && [ $((kept_bytes + size)) -le "$keep_bytes" ]; }; }; then
      kept_bytes=$((kept_bytes + size))
      continue
    fi
    over=1
    release="$(sed -n 's/^kernel_release=//p' "$dir/manifest")"
    # The exclusive lock fails while a harness holds its shared one; rm runs under it.
    if ! flock -n -x "$dir/in-use" rm -rf "$dir"; then
      echo "kept $dir (kernel $release): in use by a running harness"
      kept_bytes=$((kept_bytes + size))
      continue
    fi
    echo "removed $dir (kernel $release, $(numfmt --to=iec "$size")B, last used $(date -d "@$used" '+%F %T'))"
    freed=$((freed + size))
    removed=$((removed + 1))
  done < <(images_by_use)
  for dir in "$CACHE"/.build-*; do
    [ -d "$dir" ] || continue
    size="$(du -sb "$dir" | cut -f1)"
    rm -rf "$dir"
    echo "removed $dir (an interrupted build, $(numfmt --to=iec "$size")B)"
    freed=$((freed + size))
  done
  echo "freed $freed bytes ($(numfmt --to=iec "$freed")B) in $removed image(s); kept $(numfmt --to=iec "$kept_bytes")B"
}
