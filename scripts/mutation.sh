#!/usr/bin/env bash
# Mutation testing (mutmut 3) of the selection and scoring code, each group against its own tests.
#
#   bash scripts/mutation.sh                      # every group (~25 min on 2 shared CPU cores)
#   bash scripts/mutation.sh scoring selection    # some groups: scoring | tasks | selection | sparse
#   DISPOSITIONS=results/tests/mutation-20261130.csv bash scripts/mutation.sh
#   DISPOSITIONS=... bash scripts/mutation.sh --summary   # only redo the summary of the last run
#
# Needs the dev venv (`make setup`; mutmut is in the `dev` extra). Each group runs in its own
# scratch copy of the working tree, $MUTATION_DIR/<group> (default .mutmut/, git-ignored), so
# mutmut's `mutants/` folder and its cache never land in the source tree, and every run starts
# clean. Only the listed functions are mutated (mutant-name patterns given to `mutmut run`); the
# other functions of the same files are generated but never run, and are left out.
#
# Output: $MUTATION_DIR/summary.csv, one row per mutant (module, mutant, status, found_by,
# disposition). Dispositions of survivors are carried over by mutant id from $DISPOSITIONS (an
# earlier summary) when given; a survivor without one is printed and the script exits with 1.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
BIN=${VENV:-$REPO/.venv}/bin
WORK=${MUTATION_DIR:-$REPO/.mutmut}
JOBS=${JOBS:-2}
export TRITON_INTERPRET=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1      # one thread per mutmut worker

# group -> files to mutate | mutant-name patterns (the functions under test) | test files
declare -A FILES PATTERNS TESTS RERUN
FILES[scoring]="tasks/ruler/scoring.py"
PATTERNS[scoring]="tasks.ruler.scoring.x_*"
TESTS[scoring]="tests/test_ruler_scoring.py"

# the builders that make a sample's references (`outputs`) and their helpers, not the whole file
FILES[tasks]="tasks/ruler/tasks.py"
PATTERNS[tasks]=$(printf 'tasks.ruler.tasks.x_%s* ' _insert_lines _other _fresh build_niah _vt_chain _vt_text \
  build_vt _cwe_list cwe_pool_size build_cwe _zeta build_fwe build_qa)
TESTS[tasks]="tests/test_ruler_generate.py tests/test_ruler_oracle.py"
RERUN[tasks]=1          # module-scoped fixtures call the mutated functions: see below

FILES[selection]="tsa_core/selection/naive.py"
PATTERNS[selection]="tsa_core.selection.naive.x_*"
TESTS[selection]="tests/test_selection.py"

FILES[sparse]="tsa_core/sparse/flexprefill/naive.py tsa_core/sparse/minference/naive.py
  tsa_core/sparse/xattention/naive.py tsa_core/sparse/pattern.py"
PATTERNS[sparse]="tsa_core.sparse.flexprefill.naive.x__top_blocks* tsa_core.sparse.flexprefill.naive.x__budget_blocks*
  tsa_core.sparse.flexprefill.naive.x_coverage_blocks* tsa_core.sparse.minference.naive.x__top_forced*
  tsa_core.sparse.minference.naive.x_vertical_slash_indices* tsa_core.sparse.minference.naive.x_select_vertical_slash*
  tsa_core.sparse.xattention.naive.x_select_blocks* tsa_core.sparse.pattern.x_causal_block_grid*"
TESTS[sparse]="tests/test_sparse_flexprefill.py tests/test_sparse_minference.py tests/test_sparse_xattention.py
  tests/test_sparse_methods.py"

GROUPS_TO_RUN=("$@")
[ ${#GROUPS_TO_RUN[@]} -eq 0 ] && GROUPS_TO_RUN=(scoring selection sparse tasks)
if [ "${GROUPS_TO_RUN[0]}" = --summary ]; then
  GROUPS_TO_RUN=()
  [ -f "$WORK/rows.txt" ] || { echo "no earlier run in $WORK" >&2; exit 2; }
else
  mkdir -p "$WORK" && : > "$WORK/rows.txt"
fi

cfg_list() { for x in $1; do printf '    %s\n' "$x"; done; }

for g in "${GROUPS_TO_RUN[@]+"${GROUPS_TO_RUN[@]}"}"; do
  [ -n "${FILES[$g]:-}" ] || { echo "unknown group '$g' (scoring, tasks, selection, sparse)" >&2; exit 2; }
  dir=$WORK/$g
  rm -rf "$dir" && mkdir -p "$dir/rerun"
  tar -C "$REPO" --exclude=__pycache__ -cf - tsa_core tsa_bench tasks tests pyproject.toml | tar -C "$dir" -xf -
  # mutmut reads [tool.mutmut] in pyproject.toml, else [mutmut] in setup.cfg (this scratch copy's own)
  cat > "$dir/setup.cfg" <<EOF
[mutmut]
source_paths =
$(cfg_list "tsa_core tsa_bench tasks")
only_mutate =
$(cfg_list "${FILES[$g]}")
pytest_add_cli_args_test_selection =
$(cfg_list "${TESTS[$g]}")
pytest_add_cli_args =
    -p
    no:cacheprovider
use_git_change_detection = false
EOF
  echo "== $g: mutating ${FILES[$g]//$'\n'/ } against ${TESTS[$g]//$'\n'/ }"
  start=$(date +%s)
  # shellcheck disable=SC2086  # the patterns are words on purpose
  (cd "$dir" && "$BIN/mutmut" run --max-children "$JOBS" ${PATTERNS[$g]} > run.log 2>&1) \
    || { tail -40 "$dir/run.log"; echo "mutmut failed for $g (log: $dir/run.log)" >&2; exit 1; }
  (cd "$dir" && "$BIN/mutmut" results --all true) | sed -n 's/^ *\([^ :]*\): \(.*\)$/\1,\2/p' \
    | while IFS=, read -r key status; do
        for p in ${PATTERNS[$g]}; do
          # shellcheck disable=SC2053  # glob match on purpose
          if [[ $key == $p ]]; then echo "$key,$status"; break; fi
        done
      done > "$dir/mutmut.csv"
  # mutmut runs each mutant against the tests that called its function while it collected its
  # stats; a call made while a module-scoped fixture was built is credited to the first test
  # that used the fixture only (test_ruler_generate's `generated`, test_ruler_oracle's
  # `samples`). So in such a group every survivor runs once more against the group's whole
  # test files, the mutant switched on the way mutmut's trampolines read it (MUTANT_UNDER_TEST).
  # (The other groups' module fixtures only make input tensors.)
  # shellcheck disable=SC2016  # expanded by the inner bash
  { [ -n "${RERUN[$g]:-}" ] && grep ',survived$' "$dir/mutmut.csv" || true; } | cut -d, -f1 \
    | TESTS_G=${TESTS[$g]} BIN=$BIN xargs -r -P "$JOBS" -I{} bash -c '
        cd "$0/mutants" && MUTANT_UNDER_TEST=$1 timeout 900 "$BIN/python" -m pytest -x -q -p no:cacheprovider \
          --basetemp="$0/rerun/tmp-$1" $TESTS_G > "$0/rerun/$1.log" 2>&1
        rc=$?; rm -rf "$0/rerun/tmp-$1"
        case $rc in 0) echo "$1,survived";; 1) echo "$1,killed";; 124) echo "$1,timeout";; *) echo "$1,error $rc";; esac
      ' "$dir" {} > "$dir/rerun.csv"
  "$BIN/python" - "$dir/mutmut.csv" "$dir/rerun.csv" >> "$WORK/rows.txt" <<'PY'
import sys
rerun = dict(line.strip().split(",", 1) for line in open(sys.argv[2]))
for line in open(sys.argv[1]):
    key, status = line.strip().split(",", 1)
    again = rerun.get(key, status)
    print(f"{key},{again},{'rerun' if again != status else 'mutmut'}")
PY
  echo "   $(( $(date +%s) - start )) s; $(wc -l < "$dir/rerun.csv") survivors re-run on the whole test files"
done

"$BIN/python" - "$WORK/rows.txt" "$WORK/summary.csv" "${DISPOSITIONS:-}" <<'PY'
import collections, csv, re, sys
rows_path, out_path, disp_path = sys.argv[1:4]
DETECTED = ("killed", "timeout")      # a timeout is a detected mutant too (the tests did not pass)
disp = {}
if disp_path:
    with open(disp_path, newline="") as f:
        disp = {r["mutant"]: r["disposition"] for r in csv.DictReader(f) if r["disposition"]}
rows = []
with open(rows_path) as f:
    for line in f:
        key, status, found_by = line.strip().split(",")
        module = re.sub(r"\.x[_ǁ].*$", "", key)
        rows.append((module, key, status, found_by if status in DETECTED else "",
                     "" if status in DETECTED else disp.get(key, "")))
with open(out_path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["module", "mutant", "status", "found_by", "disposition"])
    w.writerows(rows)
counts = collections.OrderedDict()
for module, _, status, _, _ in rows:
    counts.setdefault(module, collections.Counter())[status] += 1
print(f"{'module':40s} {'mutants':>7s} {'killed':>6s} {'survived':>8s} {'timeout':>7s} other")
for module, c in counts.items():
    other = {k: v for k, v in c.items() if k not in ("killed", "survived", "timeout")}
    print(f"{module:40s} {sum(c.values()):7d} {c['killed']:6d} {c['survived']:8d} {c['timeout']:7d} {other or ''}")
open_ = [r for r in rows if r[2] not in DETECTED and not r[4]]
for r in open_:
    print(f"unexplained {r[2]}: {r[1]}")
print(out_path)
sys.exit(1 if open_ else 0)
PY
