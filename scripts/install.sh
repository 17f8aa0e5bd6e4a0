#!/usr/bin/env bash
# Install psml-bench, bubblewrap (the attack sandbox) and the offline Fashion-MNIST data on a fresh machine.
#   scripts/install.sh          the package (editable) and the dataset
#   scripts/install.sh --test   the same plus the test extra (pytest, selenium) and Debian's chromium and
#                               chromium-driver (the headless browser that checks the leaderboard web page)
set -euo pipefail
cd "$(dirname "$0")/.."

extra=""
[[ "${1:-}" == "--test" ]] && extra="[test]"

sudo=""
[[ "$(id -u)" != 0 ]] && command -v sudo >/dev/null 2>&1 && sudo="sudo"

# bubblewrap: the sandbox every attack process runs in (docs/submissions.md)
if ! command -v bwrap >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "installing bubblewrap (Debian package bubblewrap), the attack sandbox"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq bubblewrap >/dev/null
  else
    echo "no apt-get here: install bubblewrap (bwrap) with your package manager; without it only built-in" \
         "attacks run, unsandboxed" >&2
  fi
fi

data_dir="${PSML_BENCH_FMNIST_DIR:-/usr/share/datasets/fashion-mnist}"
if [[ ! -e "$data_dir/train-images-idx3-ubyte.gz" && ! -e "$data_dir/train-images-idx3-ubyte" ]]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "no apt-get here: psml-bench will load Fashion-MNIST from the Hugging Face Hub," \
         "or set PSML_BENCH_FMNIST_DIR to a directory with the IDX files" >&2
  fi
fi

if [[ -n "$extra" ]] && ! command -v chromedriver >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [[ "$(id -u)" != 0 ]] && command -v sudo >/dev/null 2>&1 && sudo="sudo"
    echo "installing chromium and chromium-driver (Debian) for the web page test"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "no apt-get here: install chromium and chromedriver for tests/test_webpage.py" >&2
  fi
fi

python3 -m pip install --quiet --disable-pip-version-check -e ".${extra}"
echo "psml-bench installed: $(command -v psml-bench)"
