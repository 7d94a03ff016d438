"""Bad command lines get one line of error and exit code 2, before any model library is imported.

The table of cases is `tests/unit/bad_inputs.py`; one process plays all of them (as the launch scripts'
`main`), so that what each case imported can be read from `sys.modules`. A `grpo.*` key toolgym does not
define is checked against TRL's GRPOConfig, which imports TRL: those cases are in test_config.py."""

import json
import re
import subprocess
import sys

import pytest

from tests.unit.bad_inputs import CASES, ROOT, argv, write_files


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-inputs")
    write_files(folder)
    out = subprocess.run([sys.executable, "-m", "tests.unit.bad_inputs", str(folder)], check=False, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return {r["id"]: r for r in map(json.loads, out.stdout.splitlines())}


def assert_one_line_error(result: dict, pattern: str) -> None:
    lines = result["stderr"].splitlines()
    assert result["code"] == 2, result
    assert len(lines) == 1 and lines[0].startswith("error: "), result["stderr"]
    assert re.search(pattern, lines[0]), lines[0]


def test_the_table_names_each_case_once():
    assert len(CASES) >= 41 and len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_a_bad_command_line_gets_one_line_before_any_model_library(results, case):
    assert_one_line_error(results[case[0]], case[3])
    assert results[case[0]]["heavy"] == []  # torch, transformers, trl, peft, vllm: none imported


def test_a_good_command_line_imports_no_model_library_either(results):
    assert results["good"]["code"] == 0 and results["good"]["stderr"] == "" and results["good"]["heavy"] == []


@pytest.mark.parametrize("case_id", ["yaml_tab", "reward_syntax_module", "sft_lr_negative", "eval_model_unknown"])
def test_the_scripts_print_the_line_and_exit_2(case_id, tmp_path):
    case = next(c for c in CASES if c[0] == case_id)
    write_files(tmp_path)
    out = subprocess.run([sys.executable, str(ROOT / "launch" / f"{case[1]}.py"), *argv(case)], check=False,
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert_one_line_error({"code": out.returncode, "stderr": out.stderr}, case[3])
    assert out.stdout == ""
