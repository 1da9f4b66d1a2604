# Sourced by scripts/stack and scripts/test: sets up what the stack needs on a fresh machine.
# REPO, VENV and PY are set for the caller.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$REPO/.venv}
PY=$VENV/bin/python

need_system_packages() {
  local missing=()
  for tool in "$@"; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing ${missing[*]} with apt-get" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  else
    echo "bootstrap: missing ${missing[*]}; install them, e.g.: sudo apt-get install ${missing[*]}" >&2
    return 1
  fi
}

# Installs a requirements file into the virtualenv once per content change.
pip_install() {
  local file=$1 stamp
  [ -x "$PY" ] || python3 -m venv "$VENV" || { echo "bootstrap: python3 -m venv failed (apt-get install python3-venv)" >&2; return 1; }
  stamp=$VENV/.installed-$(basename "$file")-$(cat "$REPO"/requirements*.txt | sha256sum | cut -c1-16)
  [ -f "$stamp" ] && return 0
  echo "bootstrap: pip install -r $(basename "$file") into $VENV" >&2
  "$PY" -m pip install -q --disable-pip-version-check -r "$file" >&2 && touch "$stamp"
}

# Node packages of a folder of the repo with a package-lock.json (e.g. tests/deployment/node/: the Node test
# clients), once per lock change, then its `npm run build` if it has one. A missing folder is fine.
npm_install() {
  local dir=$REPO/${1:?npm_install: which folder?} stamp
  [ -f "$dir/package-lock.json" ] || return 0
  stamp=$dir/node_modules/.installed-$(sha256sum "$dir/package-lock.json" | cut -c1-16)
  if [ ! -f "$stamp" ]; then
    echo "bootstrap: npm ci in ${dir#$REPO/}" >&2
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2) && touch "$stamp" || return 1
  fi
  if grep -q '"build" *:' "$dir/package.json"; then
    (cd "$dir" && npm run --silent build >&2)
  fi
}

# The front-end assets of the app: every folder (one level down) whose package.json has a "build" script gets
# npm_install (npm ci, npm run build), the rule the Dockerfile's assets stage follows. None is fine.
build_assets() {
  local package dir status=0
  for package in "$REPO"/*/package.json; do
    [ -f "$package" ] && grep -q '"build" *:' "$package" || continue
    dir=$(basename "$(dirname "$package")")
    if ! command -v npm >/dev/null 2>&1; then
      echo "bootstrap: npm not found: $dir/ is not built (npm ci && npm run build in $dir/)" >&2
      status=1
    elif ! npm_install "$dir"; then
      echo "bootstrap: npm ci / npm run build failed in $dir/" >&2
      status=1
    fi
  done
  return $status
}

# Headless Chromium and its driver, for browser tests (Selenium).
need_browser() {
  need_system_packages chromium:chromium chromedriver:chromium-driver
}
