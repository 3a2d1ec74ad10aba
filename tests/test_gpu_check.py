"""Tests of tools/gpu_check.py on CPU, where it cannot run its checks: every command it would launch parses with
the launched program's own flag parser (a misspelt flag would cost a GPU session its only call), and without a
GPU it stops in one line."""

import config
from tools import bench, gpu_check, profile_step


def test_every_launched_command_parses_with_its_program_s_flags(monkeypatch, tmp_path):
    commands = []
    monkeypatch.setattr(gpu_check, "gpu_count", lambda: 2)  # two GPUs: the DDP and FSDP2 launches
    monkeypatch.setattr(gpu_check, "run", lambda name, command, timeout, log: (commands.append(command) or
                                                                               (True, 1.0, "")))
    assert gpu_check.main([f"--out_dir={tmp_path}"]) == 1  # nothing ran, so no training row passes
    programs = {}
    for command in commands:
        if command[1:3] == ["-m", "pytest"]:
            assert command[3:6] == ["-q", "-m", "cuda"]
            continue
        script = next(arg for arg in command if arg.endswith(".py"))
        flags = command[command.index(script) + 1:]
        programs.setdefault(script, 0)
        programs[script] += 1
        if script == "train.py":
            config.resolve_config(config.parse_config(flags))
        elif script == "tools/bench.py":
            bench.resolve(bench.parse_config(flags))
        elif script == "tools/profile_step.py":
            profile_step.resolve(profile_step.runtime.parse_flags(flags, profile_step.ProfileConfig, "t"))
    assert programs == {"train.py": 8, "tools/bench.py": 1, "tools/profile_step.py": 1}, programs
    launches = [c for c in commands if "torch.distributed.run" in c]
    assert {f for c in launches for f in c if f.startswith("--data_parallel=")} == {"--data_parallel=ddp",
                                                                                   "--data_parallel=fsdp"}


def test_without_a_gpu_it_stops_in_one_line(tmp_path, capsys):
    assert gpu_check.main([f"--out_dir={tmp_path}"]) == 2
    assert capsys.readouterr().err.strip() == "gpu_check: no CUDA GPU visible; run this on a GPU machine"
