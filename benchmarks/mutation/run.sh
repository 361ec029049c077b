#!/usr/bin/env bash
# Mutation testing of agiqa's core math with mutmut 3 (see README.md beside this file and docs/mutation.md).
#
#   benchmarks/mutation/run.sh [module ...]      # modules: metrics splits images ma_agiqa_afm moe_regressor levels
#
# Environment (all optional):
#   MUTVENV=/tmp/mutvenv     scratch venv WITHOUT agiqa; a .pth in it puts the project venv's site-packages on sys.path
#   PROJECT_VENV=<repo>/.venv  the venv whose site-packages (torch, timm, transformers, pytest ...) are borrowed
#   WORK=/tmp/mutwork        one clone per module is made under it (WORK/<module>); the caller's tree is never mutated
#   WORKTREE_TESTS=0         1: copy the working tree's tests/ over the clone (to try uncommitted tests; src/ never)
#   JOBS=2                   mutmut --max-children
#   MUTMUT_SPEC='mutmut==3.8.1'
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(git -C "$HERE" rev-parse --show-toplevel)"
MUTVENV="${MUTVENV:-/tmp/mutvenv}"
PROJECT_VENV="${PROJECT_VENV:-$REPO/.venv}"
WORK="${WORK:-/tmp/mutwork}"
WORKTREE_TESTS="${WORKTREE_TESTS:-0}"
JOBS="${JOBS:-2}"
MUTMUT_SPEC="${MUTMUT_SPEC:-mutmut==3.8.1}"
SHARED="$(cd "$REPO/.." && pwd)/shared"  # ../shared: real label files and the official MoE-AGIQA fixture
ALL_MODULES=(metrics splits images ma_agiqa_afm moe_regressor levels)
MODULES=("$@")
[ ${#MODULES[@]} -eq 0 ] && MODULES=("${ALL_MODULES[@]}")

# Per module: the file mutated, the mutant names tested (fnmatch; methods are `xǁClassǁmethod__mutmut_N`), and the
# fast unit tests that cover it (slow / training / subprocess tests deselected).
module_config() {
    case "$1" in
        metrics)
            SOURCE=src/agiqa/metrics.py
            PATTERNS=("agiqa.metrics.*")
            TESTS=(tests/test_metrics.py)
            EXTRA=() ;;
        splits)
            SOURCE=src/agiqa/data/splits.py
            PATTERNS=("agiqa.data.splits.*")
            TESTS=(tests/data/test_splits.py)
            EXTRA=() ;;
        images)
            SOURCE=src/agiqa/data/images.py
            PATTERNS=("agiqa.data.images.*")
            TESTS=(tests/data/test_images.py)
            EXTRA=() ;;
        ma_agiqa_afm)  # the AFM only: the gated mixture of experts, not the MANIQA backbone or checkpoint filter
            SOURCE=src/agiqa/models/ma_agiqa.py
            PATTERNS=("agiqa.models.ma_agiqa.xǁAfmLayersǁ*" "agiqa.models.ma_agiqa.xǁAdaptiveFusionǁ*"
                      "agiqa.models.ma_agiqa.x_semantic_projection_name__mutmut_*")
            TESTS=(tests/models/test_ma_agiqa.py)
            EXTRA=(--deselect "tests/models/test_ma_agiqa.py::test_gates_learn_to_favour_the_informative_expert") ;;
        moe_regressor)
            SOURCE=src/agiqa/models/moe_agiqa.py
            PATTERNS=("agiqa.models.moe_agiqa.xǁMoeAgiqaRegressorǁ*" "agiqa.models.moe_agiqa.x_mix_top_k__mutmut_*"
                      "agiqa.models.moe_agiqa.x_switch_balance_loss__mutmut_*")
            TESTS=(tests/models/test_moe_agiqa_official_outputs.py tests/models/test_moe_agiqa.py)
            [ -f "$WORKDIR_SRC/tests/models/test_moe_agiqa_mixture.py" ] && TESTS+=(tests/models/test_moe_agiqa_mixture.py)
            # runs `python -m agiqa` in a subprocess, which cannot see mutmut's mutants/ copy
            EXTRA=(--deselect "tests/models/test_moe_agiqa.py::test_tiny_official_files_convert_by_cli_and_load_strictly") ;;
        levels)
            SOURCE=src/agiqa/semantic/levels.py
            PATTERNS=("agiqa.semantic.levels.*")
            TESTS=(tests/semantic/test_levels.py)
            EXTRA=() ;;
        *) echo "unknown module $1 (choose from: ${ALL_MODULES[*]})" >&2; exit 2 ;;
    esac
}

# 1. The scratch venv: mutmut, and the project's dependencies via a .pth, but no agiqa (an editable install of agiqa
#    would shadow mutmut's mutants/ copy: "no test case for any mutant", or worse, mutants tested against clean code).
if [ ! -x "$MUTVENV/bin/mutmut" ]; then
    python3 -m venv "$MUTVENV"
    site="$("$MUTVENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    "$PROJECT_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$site/zz_project_venv.pth"
    "$MUTVENV/bin/pip" install -q "$MUTMUT_SPEC"
fi
if "$MUTVENV/bin/python" -c 'import agiqa' 2>/dev/null; then
    echo "agiqa is importable in $MUTVENV: mutants would be shadowed by the installed code; use a venv without it" >&2
    exit 1
fi

export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONHASHSEED=0 TERM=dumb
mkdir -p "$WORK"
start_all=$(date +%s)
for module in "${MODULES[@]}"; do
    dir="$WORK/$module"
    rm -rf "$dir"
    git clone -q "$REPO" "$dir"
    [ -d "$SHARED" ] && ln -s "$SHARED" "$dir/shared"  # tests find ../shared from mutants/ (= $dir/shared)
    if [ "$WORKTREE_TESTS" = 1 ]; then
        (cd "$REPO" && git ls-files -co --exclude-standard tests | tar -cf - -T -) | tar -xf - -C "$dir"
    fi
    WORKDIR_SRC="$dir"
    module_config "$module"
    {
        echo "[mutmut]"
        echo "source_paths=src"
        echo "only_mutate=$SOURCE"
        echo "pytest_add_cli_args_test_selection="
        printf '    %s\n' "${TESTS[@]}"
        echo "pytest_add_cli_args="
        printf '    %s\n' -p no:cacheprovider -m "not slow" "${EXTRA[@]}"
    } > "$dir/setup.cfg"
    echo "== $module: $SOURCE, tests: ${TESTS[*]}"
    t0=$(date +%s)
    (cd "$dir" && nice -n 19 "$MUTVENV/bin/mutmut" run --max-children "$JOBS" "${PATTERNS[@]}" 2>&1 \
        | tr '\r' '\n' > "$dir/mutmut.log") || { tail -40 "$dir/mutmut.log"; exit 1; }
    echo "   mutmut took $(( $(date +%s) - t0 )) s (log: $dir/mutmut.log)"
    (cd "$dir" && "$MUTVENV/bin/python" "$HERE/summarize.py" --module "$module" --source "$SOURCE" \
        --json "$dir/summary.json" -- "${PATTERNS[@]}")
done
echo "== all done in $(( $(date +%s) - start_all )) s"
"$MUTVENV/bin/python" "$HERE/summarize.py" --table "$WORK"
