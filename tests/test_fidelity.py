"""The fidelity benchmark's set-up, checked on rows whose answer is known by hand."""

import json

import pytest
from conftest import conf

from benchmarks.fidelity import main, trtllm_bench_settings
from engines.roofline import Roofline
from engines.specs import HardwareSpec, ModelSpec

HEADER = ("id,source,where,model,gpu,tp,weight_dtype,kv_dtype,input_tokens,output_tokens,load,requests,"
          "metric,statistic,published,unit,conditions\n")


def test_a_lone_call_gets_the_rooflines_prefill_and_decode(tmp_path, capsys):
    rows = tmp_path / "rows.csv"
    same = "h100_sxm,1,bf16,bf16"
    rows.write_text(HEADER
                    + f"A,vLLM,x,llama3_1_8b,{same},2000,5,concurrency=1,1,ttft_ms,mean,100,ms,\n"
                    + f"B,vLLM,x,llama3_1_8b,{same},2000,5,concurrency=1,1,itl_ms,mean,10,ms,\n"
                    + f"C,vLLM,x,no_such_model,{same},10,5,concurrency=1,1,ttft_ms,mean,1,ms,\n")
    summary = main(["--rows", str(rows)])
    out = capsys.readouterr().out
    roof = Roofline(ModelSpec.from_cfg(conf("model", "llama3_1_8b")),
                    HardwareSpec.from_cfg(conf("hardware", "h100_sxm")), 1)
    ttft_ms = roof.prefill_s(2000) * 1e3  # one step: 2,000 tokens fit the 8,192 budget
    line_a = next(line for line in out.splitlines() if line.startswith("A "))
    assert float(line_a.split("(")[0].split()[-2]) == pytest.approx(ttft_ms, abs=0.01)
    # decode steps of one sequence, contexts 2,000 .. 2,003 (the engine's mean context per block)
    itl = [roof.step_s([], 1, 2000 + k) for k in range(4)]
    line_b = next(line for line in out.splitlines() if line.startswith("B "))
    assert float(line_b.split("(")[0].split()[-2]) == pytest.approx(sum(itl) / 4 * 1e3, rel=1e-3)
    assert "C     cannot be set up: no conf/model/no_such_model.yaml" in out
    assert summary["rows"] == 2 and json.loads(out.strip().splitlines()[-1]) == summary


def test_trtllm_bench_settings_by_hand():
    # Llama-3.1-8B FP8 on one H100: (81,559 MiB in GiB - 8.03 GB) x 0.95 = 68.04 GiB of KV at
    # 64 KiB a token = 1.115M tokens = 4,354 requests of 128 + 128 -> capped at 4,096; tokens
    # 4,096 x (1 + 1) = 8,192
    m = ModelSpec.from_cfg({**conf("model", "llama3_1_8b"), "weight_dtype": "fp8", "kv_dtype": "fp8"})
    assert trtllm_bench_settings(m, 81_559 * 2**20, 1, 128, 128) == (4096, 8192)
    # 5,000 + 500: 199 requests -> 32 x ceil(199 / 32) = 224; 199 x (1 + 5000 / 500) = 2,189 tokens
    # -> 256 x ceil(2,189 / 256) = 2,304
    assert trtllm_bench_settings(m, 81_559 * 2**20, 1, 5000, 500) == (224, 2304)
