#!/usr/bin/env python3
"""test_aggregate.py — experiments/aggregate.py, the tool that turns sweeps into the tables
and plots of docs/results.md: reading earlier results back (--csv) must reproduce them
exactly, a run must count once however many places hold it, and --name must fold a
second-seed sweep into the first's table. Run by CTest (label unit); needs numpy and
matplotlib (Debian: python3-numpy python3-matplotlib; tools/setup.sh installs them)."""
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
try:
    import aggregate  # noqa: E402
except ImportError as e:   # numpy or matplotlib missing: say which and how to get it
    sys.exit(f"test_aggregate: cannot import experiments/aggregate.py ({e}); "
             "install python3-numpy and python3-matplotlib (tools/setup.sh test does)")

# committed aggregations, each reproduced from its own results.csv
COMMITTED = ["docs/results/gpu-small/attention_ratio-small-T512-all-tf32",
             "docs/results/gpu-small/moe_vs_dense-small-T512-tf32"]


def write_run(sweep_dir, name, accuracy, pattern="MMAM", kv_pairs=8, seq_len=64, activation_bytes=None):
    """One finished run folder as a sweep leaves it: config.yaml and summary.json (with
    activation_bytes where given, as the trainer writes it since that field exists)."""
    run = os.path.join(sweep_dir, name)
    os.makedirs(run)
    with open(os.path.join(run, "config.yaml"), "w") as f:
        f.write(f"model:\n  pattern: \"{pattern}\"\n  ffn: \"DDDD\"\n"
                f"task:\n  name: \"mqar\"\n  seq_len: {seq_len}\n  num_kv_pairs: {kv_pairs}\n")
    summary = {"task": "mqar", "params": 1000, "flops_per_token": 6000.0, "tokens_per_s": 1234.5,
               "tokens": 64000, "steps": 100, "train_seconds": 5.5, "wall_seconds": 6.0,
               "eval": [{"seq_len": L, "accuracy": accuracy / k, "loss": 1.0 + k}
                        for k, L in ((1, seq_len), (2, 2 * seq_len))]}
    if activation_bytes is not None:
        summary["activation_bytes"] = activation_bytes
    with open(os.path.join(run, "summary.json"), "w") as f:
        json.dump(summary, f)


def aggregate_quietly(argv):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        aggregate.main(argv)
    return err.getvalue()


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


class AggregateTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="braid_aggregate_")

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def test_committed_results_reproduced_from_their_csv(self):
        for folder in COMMITTED:
            out = os.path.join(self.tmp, os.path.basename(folder))
            aggregate_quietly(["--csv", os.path.join(ROOT, folder, "results.csv"), "--out", out])
            for name in ("results.csv", "results.md"):
                self.assertEqual(read(os.path.join(out, name)), read(os.path.join(ROOT, folder, name)),
                                 f"{folder}/{name} not reproduced from its results.csv")

    def test_a_run_in_a_directory_and_a_csv_counts_once_from_the_directory(self):
        sweep = os.path.join(self.tmp, "sweepA")
        write_run(sweep, "p-T64-kv8-s1", 0.50)
        first = os.path.join(self.tmp, "first")
        aggregate_quietly([sweep, "--out", first])
        shutil.rmtree(os.path.join(sweep, "p-T64-kv8-s1"))
        write_run(sweep, "p-T64-kv8-s1", 0.90)   # the same run, rescored: the directory wins
        out = os.path.join(self.tmp, "merged")
        err = aggregate_quietly([sweep, "--csv", os.path.join(first, "results.csv"), "--out", out])
        self.assertIn("left out", err)
        rows = read(os.path.join(out, "results.csv")).splitlines()[1:]
        self.assertEqual(len(rows), 2, "one run, two evaluation lengths")
        self.assertIn("| 1 | 90.0 |", read(os.path.join(out, "results.md")))

    def test_name_folds_a_second_seed_into_the_first_seeds_table(self):
        first_sweep, second_sweep = os.path.join(self.tmp, "grid"), os.path.join(self.tmp, "grid-s2")
        write_run(first_sweep, "p-T64-kv8-s1", 0.40)
        write_run(second_sweep, "p-T64-kv8-s2", 0.80)
        first = os.path.join(self.tmp, "first")
        aggregate_quietly([first_sweep, "--out", first])
        out = os.path.join(self.tmp, "both")
        aggregate_quietly([second_sweep, "--csv", os.path.join(first, "results.csv"), "--name", "grid", "--out", out])
        md = read(os.path.join(out, "results.md"))
        self.assertEqual(md.count("### "), 1, "one table, not one per sweep folder")
        self.assertIn("### grid", md)
        self.assertIn("| 2 | 60.0 (40–80) |", md)

    def test_activation_memory_column_where_runs_have_it(self):
        """A run with activation_bytes shows its MiB; merged with an earlier CSV written
        without the field, the older run shows '–', and both survive a CSV round trip."""
        old, new = os.path.join(self.tmp, "grid"), os.path.join(self.tmp, "grid-new")
        write_run(old, "a-T64-kv8-s1", 0.40)
        first = os.path.join(self.tmp, "first")
        aggregate_quietly([old, "--out", first])
        self.assertNotIn("activation", read(os.path.join(first, "results.csv")))
        self.assertNotIn("activations MiB", read(os.path.join(first, "results.md")))
        write_run(new, "b-T64-kv8-s1", 0.80, pattern="MMMM", activation_bytes=3 * 2**20)
        both = os.path.join(self.tmp, "both")
        aggregate_quietly([new, "--csv", os.path.join(first, "results.csv"), "--name", "grid", "--out", both])
        md = read(os.path.join(both, "results.md"))
        self.assertIn("activations MiB", md)
        self.assertRegex(md, r"\| b \(MMMM\) \|.*\| 3\.0 \|")
        self.assertRegex(md, r"\| a \(MMAM\) \|.*\| – \|")
        again = os.path.join(self.tmp, "again")
        aggregate_quietly(["--csv", os.path.join(both, "results.csv"), "--out", again])
        for name in ("results.csv", "results.md"):
            self.assertEqual(read(os.path.join(again, name)), read(os.path.join(both, name)))

    def test_a_csv_that_is_not_a_results_csv_is_refused_by_name(self):
        bad = os.path.join(self.tmp, "bad.csv")
        with open(bad, "w") as f:
            f.write("sweep,point\nx,y\n")
        with self.assertRaises(SystemExit) as caught:
            aggregate_quietly(["--csv", bad, "--out", os.path.join(self.tmp, "out")])
        self.assertIn("bad.csv", str(caught.exception.code))


if __name__ == "__main__":
    unittest.main()
