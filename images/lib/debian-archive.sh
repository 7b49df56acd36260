# shellcheck shell=bash
# Debian's archive as a source of guest kernels, through a PRIVATE apt configuration
# (sources list, lists, caches and an empty dpkg status under $APT_DIR): the machine's own
# apt state is never read for resolution nor written. Sourced by build-node-image.
#
# Needs: APT_DIR, log, die, die_input (exit 2), REFRESH (1 = refresh the lists now).

# The releases whose kernels we serve; buster (4.19) is no longer on the mirrors. Their
# security suites carry the newest kernel of a stable release (bookworm-security had
# 6.1.0-57 when bookworm had 6.1.0-50).
DEBIAN_SUITES="bullseye bookworm bookworm-backports trixie sid"
DEBIAN_SECURITY_SUITES="bullseye-security bookworm-security trixie-security"
# The private lists are refreshed at most this often (or with --refresh).
LISTS_MAX_AGE=86400

# The machine's own Debian mirrors (sources.list or deb822 .sources), so that a proxy or a
# local mirror the machine relies on is used; deb.debian.org elsewhere (Ubuntu, none).
# $1 = "main" or "security" (the security suites live under their own URL).
debian_mirror() {
  local kind="${1:-main}" url="" fallback="http://deb.debian.org/debian"
  [ "$kind" = security ] && fallback="http://deb.debian.org/debian-security"
  if [ "$kind" = main ] && [ -n "${DP_HARNESS_DEBIAN_MIRROR:-}" ]; then
    echo "$DP_HARNESS_DEBIAN_MIRROR"
    return
  fi
  if grep -qs '^ID=debian' /etc/os-release; then
    url="$(
      {
        sed -n 's/^[[:space:]]*deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\{0,1\}\([^[:space:]]\+\)[[:space:]]\+\([^[:space:]]\+\).*/\2 \3/p' \
          /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null
        # deb822: the URIs and Suites of each stanza, on one line.
        awk 'BEGIN { IGNORECASE = 1 }
             /^URIs:/ { u = $2 } /^Suites:/ { s = $2 }
             /^$/ { if (u != "") print u, s; u = ""; s = "" }
             END { if (u != "") print u, s }' /etc/apt/sources.list.d/*.sources 2>/dev/null
      } | awk -v kind="$kind" '(kind == "security") == ($2 ~ /-security$/) { print $1; exit }'
    )"
  fi
  echo "${url:-$fallback}"
}

apt_conf() { printf '%s/apt.conf' "$APT_DIR"; }

# Writes the private configuration: read after the machine's (apt-get -c), so it can
# clear the machine's update hooks (appstream, packagekit) that must not run for our lists.
write_apt_config() {
  local mirror="$1" security="$2" keyring="/usr/share/keyrings/debian-archive-keyring.gpg" opts="target=Packages"
  mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
  : >"$APT_DIR/status"
  [ -f "$keyring" ] && opts="$opts signed-by=$keyring"
  {
    for suite in $DEBIAN_SUITES; do
      printf 'deb [%s] %s %s main\n' "$opts" "$mirror" "$suite"
    done
    for suite in $DEBIAN_SECURITY_SUITES; do
      printf 'deb [%s] %s %s main\n' "$opts" "$security" "$suite"
    done
  } >"$APT_DIR/sources.list"
  cat >"$(apt_conf)" <<EOT
Dir::Etc::sourcelist "$APT_DIR/sources.list";
Dir::Etc::sourceparts "/dev/null";
Dir::Etc::preferences "/dev/null";
Dir::Etc::preferencesparts "/dev/null";
Dir::State::Lists "$APT_DIR/lists";
Dir::State::status "$APT_DIR/status";
Dir::Cache "$APT_DIR/cache";
// The binary cache makes each apt-cache call of a build 0.02 s instead of 3.3 s (112 MB);
// the machine may disable it (docker images do).
Dir::Cache::pkgcache "pkgcache.bin";
Dir::Cache::srcpkgcache "";
APT::Architectures { "amd64"; };
Acquire::Languages "none";
APT::Sandbox::User "$(id -un)";
#clear APT::Update::Pre-Invoke;
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
EOT
}

papt_get() { apt-get -c "$(apt_conf)" -q "$@"; }
papt_cache() { apt-cache -c "$(apt_conf)" "$@"; }

# The kernel index: one line per series, "series package version suite", the newest
# package of each; "newest" is sid's newest series. Built once per refresh of the lists.
kernel_index() { printf '%s/kernels' "$APT_DIR"; }

build_kernel_index() {
  local names
  names="$(papt_cache pkgnames linux-image- 2>/dev/null \
    | grep -E '^linux-image-[0-9]+\.[0-9]+[.-].*-amd64$' | grep -vE -- '-(rt|cloud)-amd64$' || true)"
  [ -n "$names" ] || { log "the private lists hold no linux-image-*-amd64 package"; return 1; }
  # "package | version | url suite/main amd64 Packages" -> "series version package suite"
  # shellcheck disable=SC2086
  papt_cache madison $names \
    | awk -F' *[|] *' '{
        split($3, where, " "); split(where[2], s, "/")
        match($1, /^linux-image-[0-9]+\.[0-9]+/)
        series = substr($1, 13, RLENGTH - 12)
        print series, $2, $1, s[1]
      }' >"$APT_DIR/candidates"
  local series best line ver
  : >"$APT_DIR/kernels.tmp"
  for series in $(cut -d' ' -f1 "$APT_DIR/candidates" | sort -uV); do
    best=""
    while read -r line; do
      ver="$(echo "$line" | cut -d' ' -f2)"
      if [ -z "$best" ] || dpkg --compare-versions "$ver" gt "$(echo "$best" | cut -d' ' -f2)"; then
        best="$line"
      fi
    done < <(grep "^$series " "$APT_DIR/candidates")
    echo "$best" | awk '{ print $1, $3, $2, $4 }' >>"$APT_DIR/kernels.tmp"
  done
  # newest: the highest series that sid serves.
  local newest
  newest="$(awk '$4 == "sid"' "$APT_DIR/kernels.tmp" | sort -V -k1,1 | tail -n1)"
  [ -z "$newest" ] || echo "$newest" | awk '{ $1 = "newest"; print }' >>"$APT_DIR/kernels.tmp"
  rm -f "$APT_DIR/candidates"
  mv "$APT_DIR/kernels.tmp" "$(kernel_index)"
}

lists_age() {
  local stamp="$APT_DIR/updated"
  [ -f "$stamp" ] || { echo 999999999; return; }
  echo $(($(date +%s) - $(stat -c %Y "$stamp")))
}

# Refreshes the private lists when asked, when missing or older than a day. A failed
# refresh with an older index at hand goes on with it (offline machines keep working).
# The lock serializes refreshes only: a build holds the image cache's lock instead.
ensure_kernel_index() {
  mkdir -p "$APT_DIR"
  exec 8>"$APT_DIR/.lock"
  flock 8
  if [ "$REFRESH" != 1 ] && [ -s "$(kernel_index)" ] && [ "$(lists_age)" -lt "$LISTS_MAX_AGE" ]; then
    flock -u 8
    return 0
  fi
  local mirror security
  mirror="$(debian_mirror main)"
  security="$(debian_mirror security)"
  write_apt_config "$mirror" "$security"
  log "refreshing the private apt lists ($mirror: $DEBIAN_SUITES; $security: $DEBIAN_SECURITY_SUITES) in $APT_DIR"
  local out
  # A suite the mirror no longer serves fails apt-get update but not the others: what
  # counts is whether the lists that came hold kernels.
  out="$(papt_get update 2>&1)" || true
  if build_kernel_index; then
    printf '%s\n' "$out" | grep -E '^(E|W):' | sed 's/^/  apt: /' >&2 || true
    echo "$mirror $DEBIAN_SUITES; $security $DEBIAN_SECURITY_SUITES" >"$APT_DIR/mirror"
    touch "$APT_DIR/updated"
    flock -u 8
    return 0
  fi
  printf '%s\n' "$out" | tail -n 5 | sed 's/^/  apt: /' >&2
  if [ -s "$(kernel_index)" ]; then
    log "warning: refreshing the lists failed; using the index of $(date -r "$APT_DIR/updated" +%F 2>/dev/null || echo '?')"
    flock -u 8
    return 0
  fi
  die "cannot fetch Debian's package lists from $mirror ($DEBIAN_SUITES) and $security ($DEBIAN_SECURITY_SUITES): see the apt lines above"
}

# What --list prints, and what an error about an unknown series shows.
print_kernel_index() {
  awk '{ printf "%-7s %s %s (%s)\n", $1, $2, $3, $4 }' "$(kernel_index)"
}

# "package version" of a series ("6.1", "newest"), or nothing.
resolve_series() {
  awk -v s="$1" '$1 == s { print $2, $3; exit }' "$(kernel_index)"
}

# The packages to download for a kernel package: itself and, following Depends, the
# packages of the same kernel ABI (sid's linux-image-* is a metapackage over
# linux-binary-*, linux-modules-* and linux-base-*). Prints "name=version" lines.
kernel_packages() {
  local pkg="$1" version="$2" abi="${1#linux-image-}"
  local queue=("$pkg=$version") seen=" " item dep
  while [ "${#queue[@]}" -gt 0 ]; do
    item="${queue[0]}"
    queue=("${queue[@]:1}")
    case "$seen" in *" $item "*) continue ;; esac
    seen="$seen$item "
    echo "$item"
    # "Depends: a (= 1), b | c, d-ABI (= 2)" -> the ABI's packages with their versions.
    while read -r dep; do
      [ -n "$dep" ] && queue+=("$dep")
    done < <(papt_cache show "$item" 2>/dev/null | sed -n 's/^Depends: //p' | head -n1 \
      | tr ',|' '\n\n' | sed 's/^ *//' \
      | awk -v abi="$abi" 'index($1, abi) && $1 !~ /-dbg$/ {
          v = $3; sub(/\)$/, "", v)
          print ($2 == "(=" ? $1 "=" v : $1)
        }')
  done
}

download_kernel_packages() {
  local dir="$1"
  shift
  (cd "$dir" && papt_get download "$@" >&2) || die "apt-get download $* failed"
}
