"""The command line: flags, environment, help, exit codes, and one line per mistake.

Each command runs as a real process, so what is asserted is what an
operator sees: the exit status, the output, and never a traceback or a key.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Process, free_port, process, wait_for_port

KEY = "sk_test_cli_9d1e44b7c2"
ENV = {"ABLO_API_KEY": KEY}


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["run", "--handler", "tests.handlers:TestSource"], {}, "an API key is required"),
        (["run"], ENV, "say what to serve: --handler"),
        (
            ["run", "--handler", "tests.handlers:TestSource", "--database-url", "sqlite:///x.db"],
            ENV,
            "not both",
        ),
        (["run", "--models", "models.toml"], ENV, "--models needs --database-url"),
        (
            ["run", "--database-url", "oracle://app:hunter2@db/app"],
            ENV,
            "unsupported database 'oracle'",
        ),
        (["run", "--database-url", "sqlite:///"], ENV, "in-memory SQLite"),
        (["run", "--handler", "no_such_module:X"], ENV, "cannot import handler module"),
        (["run", "--handler", "tests.handlers:Nope"], ENV, "has no attribute"),
        (["run", "--handler", "tests.handlers"], ENV, "must look like"),
        (
            ["run", "--handler", "tests.handlers:ClashingModels"],
            ENV,
            "ClashingModels.model_names: models 'Task' and 'task' both answer to 'task'",
        ),
        (
            ["run", "--handler", "tests.handlers:TestSource", "--base-url", "http://10.1.2.3"],
            ENV,
            "clear text",
        ),
        (
            ["run", "--handler", "tests.handlers:TestSource", "--api-key-file", "/nonexistent/key"],
            {},
            "cannot read the API key file",
        ),
    ],
)
async def test_configuration_mistakes_get_one_line_and_exit_78(
    args: list[str], env: dict[str, str], message: str
) -> None:
    async with process(args, {"ABLO_API_KEY": "", **env}) as cli:
        assert await cli.wait() == 78
        output = cli.output()
    assert message in output
    assert "Traceback" not in output
    assert KEY not in output


async def test_help_and_version() -> None:
    async with process(["run", "--help"]) as cli:
        assert await cli.wait() == 0
        help_text = cli.output()
    for option in (
        "--api-key-file",
        "--handler",
        "--max-in-flight",
        "ABLO_API_KEY",
        "--exit-on-auth-failure",
    ):
        assert option in help_text
    async with process(["--version"]) as cli:
        assert await cli.wait() == 0
        assert "0.1.0" in cli.output()


async def test_dev_command_shows_round_trips_on_a_fresh_demo_database() -> None:
    args = ["dev", "--exit-after-demo", "--port", str(free_port()), "--api-port", str(free_port())]
    outputs = []
    for _ in range(2):  # the second run starts from the same rows, not the first run's
        async with process(args) as cli:
            assert await cli.wait(30) == 0, cli.output()
            outputs.append(cli.output())
    for output in outputs:
        assert output.count("← HTTP 200") == 4
        assert '"title":"Write the connector\'s README","done":false' in output
        assert '"done":true' in output  # the demo commit's answer
        database = re.search(r"demo database: (\S+)", output)
        assert database is not None and not Path(database.group(1)).exists()


BROKEN_MODULES = {
    "broken_syntax.py": "from connector import DataSource\n\nclass Source(DataSource)\n    pass\n",
    "broken_import.py": "import no_such_package_for_ablo\n",
    "broken_init.py": (
        "from connector import DataSource\n\n"
        "class Source(DataSource):\n"
        "    def __init__(self):\n"
        "        raise RuntimeError('cannot open the pool')\n"
    ),
}


@pytest.fixture
def broken_modules(tmp_path: Path) -> dict[str, str]:
    for name, text in BROKEN_MODULES.items():
        (tmp_path / name).write_text(text)
    return {"PYTHONPATH": str(tmp_path)}


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (
            "./tests/handlers.py:TestSource",
            "names a file; give its module instead, e.g. 'tests.handlers:TestSource'",
        ),
        ("broken_syntax:Source", "has a syntax error at "),
        ("broken_import:Source", "imports 'no_such_package_for_ablo', which is not installed (at "),
        ("broken_init:Source", "failed to start: RuntimeError: cannot open the pool (at "),
    ],
)
async def test_a_broken_handler_module_is_one_line_naming_file_and_line(
    broken_modules: dict[str, str], handler: str, message: str
) -> None:
    async with process(["run", "--handler", handler], {**ENV, **broken_modules}) as cli:
        assert await cli.wait() == 78
        output = cli.output()
    assert message in output, output
    if "(at " in message or "syntax" in message:
        assert re.search(r"broken_\w+\.py(, line|\", line| line) ?\d+|line \d+", output), output
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1, output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--base-url", "http://127.0.0.1:99999"], "has a port outside 1-65535"),
        (
            ["--base-url", "https://api.example.com/v1/source/listen"],
            "already ends in /v1/source/listen: give the engine's base URL (e.g. https://api.example.com)",
        ),
        (["--api-key", 'sk_test_"quoted"'], "cannot travel in a WebSocket subprotocol"),
        (["--api-key", "sk_test_a,b"], "cannot travel in a WebSocket subprotocol"),
        (["--api-key", "sk_test_a\\b"], "cannot travel in a WebSocket subprotocol"),
        (["--health-addr", "9464"], "is not HOST:PORT"),
    ],
)
async def test_start_up_mistakes_exit_78_at_once(extra: list[str], message: str) -> None:
    args = ["run", "--handler", "tests.handlers:TestSource", *extra]
    async with process(args, ENV) as cli:
        assert await cli.wait(15) == 78
        output = cli.output()
    assert message in output, output
    assert "Traceback" not in output


async def test_check_refuses_a_base_url_with_a_bad_port() -> None:
    async with process(["check", "--base-url", "http://127.0.0.1:99999"], ENV) as cli:
        assert await cli.wait(15) == 78
        output = cli.output()
    assert "FAIL  configuration: base URL 'http://127.0.0.1:99999' has a port outside" in output
    assert "Traceback" not in output


async def test_dev_with_its_ports_taken_is_one_line_and_78() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["dev", "--exit-after-demo", "--port", str(port), "--api-port", str(free_port())]
        async with process(args) as cli:
            assert await cli.wait(30) == 78
            output = cli.output()
    assert f"cannot listen on 127.0.0.1:{port}" in output and "--port/--api-port" in output
    assert "Traceback" not in output


async def test_not_both_names_where_the_key_came_from(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    key_file.chmod(0o600)
    args = ["run", "--handler", "tests.handlers:TestSource", "--api-key-file", str(key_file)]
    async with process(args, ENV) as cli:
        assert await cli.wait() == 78
        assert "give ABLO_API_KEY from the environment or --api-key-file, not both" in cli.output()
    args = ["run", "--handler", "tests.handlers:TestSource", "--api-key", KEY]
    async with process(args, {"ABLO_API_KEY_FILE": str(key_file)}) as cli:
        assert await cli.wait() == 78
        assert "give --api-key or ABLO_API_KEY_FILE from the environment, not both" in cli.output()


async def test_a_key_file_others_can_read_draws_a_warning(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    key_file.chmod(0o644)
    args = ["check", "--api-key-file", str(key_file), "--base-url", "http://127.0.0.1:1"]
    async with process(args) as cli:
        await cli.wait(30)
        output = cli.output()
    assert f"the API key file {key_file} is readable by other users (mode 644)" in output
    assert f"chmod 600 {key_file}" in output
    assert KEY not in output


async def test_env_file_is_read_before_the_environment_which_wins(tmp_path: Path) -> None:
    env_file = tmp_path / "connector.env"
    env_file.write_text(
        "# as in /etc/ablo-connector/ablo-connector.env\n"
        "ABLO_CONNECTOR_HANDLER=tests.handlers:TestSource\n"
        "export ABLO_BASE_URL='http://10.9.9.9:8787'\n"
        'ABLO_API_KEY="sk_test_from_the_file"\n'
    )
    # From the file alone: the handler and the base URL are read (and the URL refused).
    async with process(["run", "--env-file", str(env_file)], {"ABLO_API_KEY": ""}) as cli:
        assert await cli.wait() == 78
        assert "refusing to send the API key in clear text to 10.9.9.9" in cli.output()
    # The environment wins over the file; ABLO_ENV_FILE names the file.
    async with process(
        ["check", "--no-register"],
        {**ENV, "ABLO_ENV_FILE": str(env_file), "ABLO_BASE_URL": "http://127.0.0.1:1"},
    ) as cli:
        assert await cli.wait(30) == 69
        output = cli.output()
    assert "ok    configuration: ws://127.0.0.1:1/v1/source/listen" in output
    assert f"{len(KEY)} characters" in output  # the environment's key, not the file's
    bad = tmp_path / "bad.env"
    bad.write_text("THIS IS NOT AN ASSIGNMENT\n")
    async with process(["run", "--env-file", str(bad)], ENV) as cli:
        assert await cli.wait() == 78
        assert f"{bad}, line 1: expected NAME=value" in cli.output()


async def test_run_help_is_grouped_and_every_setting_shows_its_default() -> None:
    from connector import Config

    async with process(["run", "--help"]) as cli:
        assert await cli.wait() == 0
        text = cli.output()
    sections = ["What to serve:", "The engine:", "Limits:", "Operations:", "Logging:"]
    assert [text.index(s) for s in sections] == sorted(text.index(s) for s in sections)
    config = Config(api_key=KEY)
    for flag, value in {
        "--max-in-flight": config.max_in_flight,
        "--request-timeout": config.request_timeout,
        "--shutdown-grace": config.shutdown_grace,
        "--max-message-size": config.max_message_size,
    }.items():
        block = text[text.index(f"  {flag} ") :]
        assert f"default: {value}" in " ".join(block[:400].split()), flag
    flat = " ".join(text.split())
    assert "k8s://" in flat and "json: one JSON object per line" in flat
    assert text.startswith("Usage: ablo-connector run [OPTIONS]")


async def test_version_says_where_it_is_installed_from() -> None:
    import connector

    async with process(["--version"]) as cli:
        assert await cli.wait() == 0
        output = cli.output()
    assert output.startswith(f"ablo-connector {connector.__version__} (")
    assert str(Path(connector.__file__).parent) in output


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("class Source(DataSource):\n    pass\n", "overrides none of load, list, commit, events"),
        (
            "class Source(DataSource):\n"
            "    def list(self, model, query, ctx):\n        return []\n"
            "    def lod(self, model, id, ctx):\n        return None\n",
            "method 'lod' matches no operation; did you mean 'load'?",
        ),
        (
            "class Source(DataSource):\n    def events(self, query, ctx):\n        return []\n",
            "cannot be called as events(cursor, limit, ctx)",
        ),
        (
            "class Source(DataSource):\n    model_names = {'items': 'Item', 'item': None}\n"
            "    def load(self, model, id, ctx):\n        return None\n",
            "Source.model_names: models 'items' and 'item' both answer to 'item'",
        ),
        (
            "class Source(DataSource):\n    def served_models(self, ctx):\n        return None\n"
            "    def load(self, model, id, ctx):\n        return None\n",
            "cannot be called as served_models()",
        ),
    ],
)
async def test_check_finds_a_handler_that_cannot_serve(
    tmp_path: Path, source: str, problem: str
) -> None:
    (tmp_path / "mistaken.py").write_text("from connector import DataSource\n\n" + source)
    args = ["check", "--handler", "mistaken:Source"]
    async with process(args, {"PYTHONPATH": str(tmp_path), "ABLO_API_KEY": ""}) as cli:
        assert await cli.wait() == 78
        output = cli.output()
    assert "FAIL  handler: " in output and problem in output, output
    assert "all checks passed" not in output


async def test_check_with_only_a_handler_needs_no_key() -> None:
    async with process(
        ["check", "--handler", "tests.handlers:TestSource"], {"ABLO_API_KEY": ""}
    ) as cli:
        assert await cli.wait() == 0
        output = cli.output()
    assert "ok    handler: tests.handlers:TestSource (TestSource: load, list)" in output
    assert "skip  engine: no API key" in output and "all checks passed" in output


SECRET = "Sup3rS3cretPw"


@pytest.mark.parametrize("command", ["run", "check", "migrate"])
@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app:Pass@{SECRET}@127.0.0.1:1/app",
        f"postgresql://app:Pa?ss@{SECRET}@127.0.0.1:1/app",
        f"postgresql://app:Pa#ss@{SECRET}@127.0.0.1:1/app",
        f"postgresql://app:Pa/ss@{SECRET}@127.0.0.1:1/app",
    ],
)
async def test_a_database_url_with_a_raw_at_sign_is_refused_without_leaking(
    command: str, url: str
) -> None:
    env = ENV if command == "run" else {"ABLO_API_KEY": ""}  # check needs no key for this
    async with process([command, "--database-url", url], env) as cli:
        assert await cli.wait(30) == 78
        output = cli.output()
    assert "more than one '@'; percent-encode '@'" in output
    assert SECRET not in output and "Pa" not in output and "Traceback" not in output


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app@127.0.0.1:1/app?password={SECRET}",
        f"postgresql://app@127.0.0.1:1/app?%70assword={SECRET}",
        f"postgresql://app:x?{SECRET}@127.0.0.1:1/app",
    ],
)
@pytest.mark.parametrize("command", ["run", "check", "migrate"])
async def test_a_database_password_in_any_form_never_appears(command: str, url: str) -> None:
    args = [command, "--database-url", url]
    if command == "run":
        args += ["--base-url", "http://127.0.0.1:1", "--log-format", "json"]
    async with process(args, ENV if command == "run" else {"ABLO_API_KEY": ""}) as cli:
        if command == "run":
            # Its probe has tried the database (and said so) before it is stopped.
            await cli.wait_for_output("the source cannot serve")
            cli.signal(signal.SIGTERM)
        await cli.wait(30)
        output = cli.output()
    assert "127.0.0.1" in output, output  # it did talk about the database
    assert SECRET not in output and "Traceback" not in output, output


@pytest.mark.parametrize("command", ["run", "check", "migrate"])
async def test_a_database_url_with_a_bad_port_is_one_line_and_78(command: str) -> None:
    url = f"postgresql://app:{SECRET}@127.0.0.1:port/app"
    env = ENV if command == "run" else {"ABLO_API_KEY": ""}
    async with process([command, "--database-url", url], env) as cli:
        assert await cli.wait(30) == 78
        output = cli.output()
    assert "the database URL is not valid" in output
    assert SECRET not in output and "Traceback" not in output


@pytest.mark.parametrize(
    "lock",
    [
        f"postgresql://ha:{SECRET}@127.0.0.1:1/app?name=orders",
        f"postgresql://ha:{SECRET}%zz@127.0.0.1:1/app?name=orders",  # a bad % escape
        f"postgresql://ha@127.0.0.1:1/app?name=orders&password={SECRET}",
        f"mysql://ha:{SECRET}@127.0.0.1:1/?name=orders",
        f"mariadb://ha:{SECRET}%zz@127.0.0.1:1/?name=orders",
    ],
)
async def test_a_lock_password_never_appears_and_the_command_line_draws_a_warning(
    lock: str,
) -> None:
    args = ["run", "--handler", "tests.handlers:TestSource", "--base-url", "http://127.0.0.1:1"]
    async with process([*args, "--ha-lock", lock], ENV) as cli:
        await cli.wait_for_output("cannot reach the HA lock")
        cli.signal(signal.SIGTERM)
        assert await cli.wait(10) == 0
        output = cli.output()
    assert "cannot reach the HA lock" in output, output
    assert "where other local users can see it in the process list; prefer ABLO_HA_LOCK" in output
    assert SECRET not in output


async def test_run_turns_core_dumps_off() -> None:
    args = ["run", "--handler", "tests.handlers:TestSource", "--base-url", "http://127.0.0.1:1"]
    async with process(args, ENV) as cli:
        deadline = time.monotonic() + 10
        while "connector starting" not in cli.output():
            assert time.monotonic() < deadline, cli.output()
            await asyncio.sleep(0.05)
        limits = Path(f"/proc/{cli.pid}/limits").read_text()
        cli.signal(signal.SIGTERM)
        assert await cli.wait(10) == 0
    core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"], core


async def test_a_kubernetes_lock_outside_a_pod_is_one_line_and_78() -> None:
    args = ["run", "--handler", "tests.handlers:TestSource", "--ha-lock", "k8s://ns/ablo"]
    env = {**ENV, "KUBERNETES_SERVICE_HOST": "", "ABLO_K8S_API_URL": ""}
    async with process(args, env) as cli:
        assert await cli.wait(15) == 78
        output = cli.output()
    assert "k8s:// locks run in a Kubernetes pod" in output and "Traceback" not in output


async def test_dev_sends_a_failing_handlers_exception_text() -> None:
    """``run`` answers a handler's exception with a generic message; ``dev`` shows the detail."""
    api_port = free_port()
    args = ["dev", "--handler", "tests.handlers:TestSource", "--port", str(free_port()),
            "--api-port", str(api_port)]  # fmt: skip
    async with process(args) as dev:
        await wait_for_port(api_port)
        engine = f"http://127.0.0.1:{api_port}"
        async with process(["request", "load", "task", "boom", "--engine", engine]) as request:
            assert await request.wait(30) == 1
            output = request.output()
        dev.signal(signal.SIGTERM)
        assert await dev.wait(10) == 0
    assert "HTTP 500" in output and "database refused credentials" in output, output


async def test_dev_serves_what_the_environment_says_and_leaves_no_demo_behind(
    tmp_path: Path,
) -> None:
    from tests.helpers import execute

    url = f"sqlite:///{tmp_path / 'mine.db'}"
    execute(url, "CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)")
    from connector.adapters.sql import create_database_engine, migrate

    engine = create_database_engine(url)
    migrate(engine)
    engine.dispose()
    args = ["dev", "--exit-after-demo", "--port", str(free_port()), "--api-port", str(free_port())]
    async with process(args, {"ABLO_DATABASE_URL": url}) as cli:
        assert await cli.wait(60) == 0, cli.output()
        output = cli.output()
    assert "serving 1 model(s)" in output and "notes" in output
    assert "demo database" not in output
    # Interrupted as soon as the demo database exists (before any signal handler
    # of the connector's): the database is removed all the same.
    demo_args = ["dev", "--port", str(free_port()), "--api-port", str(free_port())]
    async with process(demo_args) as cli:
        deadline = time.monotonic() + 15
        while (found := re.search(r"demo database: (\S+)", cli.output())) is None:
            assert time.monotonic() < deadline, cli.output()
            await asyncio.sleep(0.01)
        cli.signal(signal.SIGINT)
        await cli.wait(60)  # a bound, not a pause: a busy machine may take its time
    assert not Path(found.group(1)).parent.exists(), cli.output()


async def test_dev_stops_at_once_when_interrupted_during_the_demo() -> None:
    """Ctrl-C as soon as the connector is ready, while the demo requests run:
    the demo ends with the connector instead of waiting on requests nobody serves."""
    args = ["dev", "--port", str(free_port()), "--api-port", str(free_port())]
    async with process(args) as cli:
        deadline = time.monotonic() + 15
        while "ready: serving source" not in cli.output():
            assert time.monotonic() < deadline, cli.output()
            await asyncio.sleep(0.01)
        cli.signal(signal.SIGINT)
        started = time.monotonic()
        assert await cli.wait(10) == 0, cli.output()
        assert time.monotonic() - started < 5, cli.output()
        output = cli.output()
    found = re.search(r"demo database: (\S+)", output)
    assert found is not None and not Path(found.group(1)).parent.exists(), output
    assert "Traceback" not in output, output


async def test_dev_engine_never_takes_the_key_from_abloapi_key() -> None:
    port, api_port = free_port(), free_port()
    env = {"ABLO_API_KEY": "sk_live_a_real_key_exported_for_run"}
    async with process(["dev-engine", "--port", str(port), "--api-port", str(api_port)], env):
        await wait_for_port(port)
        async with process(
            [
                "run",
                "--handler",
                "tests.handlers:TestSource",
                "--base-url",
                f"http://127.0.0.1:{port}",
            ],
            {"ABLO_API_KEY": "sk_test_local_dev_engine"},
        ) as connector:
            deadline = time.monotonic() + 10
            while "ready: serving source" not in connector.output():
                assert time.monotonic() < deadline, connector.output()
                await asyncio.sleep(0.1)


@pytest.mark.parametrize("command", ["run", "check", "dev", "migrate"])
async def test_every_command_warns_of_a_database_password_typed_on_the_command_line(
    command: str,
) -> None:
    url = f"postgresql://app:{SECRET}@127.0.0.1:1/app"
    extra = {
        "run": ["--base-url", "http://127.0.0.1:1"],
        "dev": ["--port", str(free_port()), "--api-port", str(free_port()), "--exit-after-demo"],
    }.get(command, [])
    warning = "the password of --database-url was given on the command line"
    for typed in (True, False):
        args = [command, *(["--database-url", url] if typed else []), *extra]
        env = {**ENV, **({} if typed else {"ABLO_DATABASE_URL": url})}
        if command == "check":
            env["ABLO_API_KEY"] = ""  # the database step alone
        async with process(args, env) as cli:
            if command == "run":
                await eventually_in(cli, "unreachable")
                cli.signal(signal.SIGTERM)
            await cli.wait(30)
            output = cli.output()
        assert (warning in output) is typed, output
        assert "prefer ABLO_DATABASE_URL" in output if typed else True
        assert SECRET not in output and "Traceback" not in output, output


async def eventually_in(cli: Any, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in cli.output():
        assert time.monotonic() < deadline, cli.output()
        await asyncio.sleep(0.05)


async def test_not_both_says_where_each_value_came_from(tmp_path: Path) -> None:
    env_file = tmp_path / "ablo-connector.env"
    env_file.write_text("ABLO_CONNECTOR_HANDLER=tests.handlers:TestSource\n")
    database = f"sqlite:///{tmp_path / 'app.db'}"
    cases = [
        (
            ["run", "--env-file", str(env_file), "--database-url", database],
            {},
            f"give ABLO_CONNECTOR_HANDLER from the env file {env_file} or --database-url, not both",
        ),
        (
            ["check", "--handler", "tests.handlers:TestSource"],
            {"ABLO_DATABASE_URL": database},
            "give --handler or ABLO_DATABASE_URL from the environment, not both",
        ),
        (  # as a systemd unit runs it: both from its EnvironmentFile=
            ["run"],
            {
                "INVOCATION_ID": "0e3c",
                "ABLO_CONNECTOR_HANDLER": "tests.handlers:TestSource",
                "ABLO_DATABASE_URL": database,
            },
            "give ABLO_CONNECTOR_HANDLER from the environment (the unit's Environment= or "
            "EnvironmentFile=) or ABLO_DATABASE_URL from the environment (the unit's",
        ),
    ]
    for args, env, message in cases:
        async with process(args, {"INVOCATION_ID": "", **ENV, **env}) as cli:
            assert await cli.wait() == 78
            output = cli.output()
        assert message in output, output


async def test_request_list_takes_operators_and_json_conditions() -> None:
    """``--where`` with operators, through dev's demo database: after its demo
    commit, t1 and t3 are done, t2 is open."""
    api_port = free_port()
    args = ["dev", "--port", str(free_port()), "--api-port", str(api_port)]
    engine = f"http://127.0.0.1:{api_port}"
    cases = [
        (["done=true", "title LIKE %README%"], ["t1"]),
        (["done = true", "title NOT LIKE %README%"], ["t3"]),
        (['id IN ["t1", "t2"]', "done!=true"], ["t2"]),
        (['["id", ">=", "t2"]', '{"field": "done", "op": "=", "value": true}'], ["t3"]),
        (["title ilike %DATABASE%"], ["t2", "t3"]),
        (["id<t2"], ["t1"]),
    ]
    async with process(args) as dev:
        await eventually_in(dev, "Serving.", timeout=30)
        for conditions, expected in cases:
            where = [part for condition in conditions for part in ("--where", condition)]
            request = ["request", "list", "task", *where, "--order-by", "id", "--engine", engine]
            async with process(request) as cli:
                assert await cli.wait(30) == 0, cli.output()
                output = cli.output()
            assert re.findall(r'"id": "(t\d)"', output) == expected, (conditions, output)
        async with process(
            ["request", "list", "task", "--where", "done", "--engine", engine]
        ) as cli:
            assert await cli.wait(30) == 2
            assert "--where 'done' is not a condition: write FIELD OP VALUE" in cli.output()
        dev.signal(signal.SIGTERM)
        assert await dev.wait(15) == 0


def test_where_conditions_take_the_wire_form_the_readme_shows() -> None:
    from connector.cli.dev import parse_condition

    assert parse_condition("done=false") == ["done", False]
    assert parse_condition("priority>=2") == ["priority", ">=", 2]
    assert parse_condition("title LIKE %x%") == ["title", "LIKE", "%x%"]
    assert parse_condition("dueAt is not null") == ["dueAt", "IS NOT", None]
    assert parse_condition("priority  not  in [1,2]") == ["priority", "NOT IN", [1, 2]]
    assert parse_condition('code="2"') == ["code", "2"]
    assert parse_condition("note=a=b") == ["note", "a=b"]
    assert parse_condition('["priority", ">=", 2]') == ["priority", ">=", 2]
    for wrong in ("done", "=x", "priority>=", "[1,"):
        with pytest.raises(ValueError):
            parse_condition(wrong)


# ------------------------------------------------ Ctrl-C during start-up

COMMAND = Path(sys.executable).with_name("ablo-connector")  # the console script


def _command(*args: str, python_flags: tuple[str, ...] = ()) -> Process:
    """The console script (what a user types), not ``python -m connector``."""
    assert COMMAND.exists(), f"the console script is not installed next to {sys.executable}"
    started = Process([], {**ENV, "ABLO_LOG_FORMAT": ""})
    started.args = [sys.executable, *python_flags, str(COMMAND), *args]
    return started


async def _interrupt_when(cli: Process, marker: str) -> tuple[int, list[str]]:
    await cli.start()
    try:
        await eventually_in(cli, marker, timeout=60)
        cli.signal(signal.SIGINT)
        status = await cli.wait(30)
        lines = [
            line
            for line in cli.output().splitlines()
            if line.strip() and not line.startswith("import time:")  # -X importtime's
        ]
    finally:
        await cli.stop()
    return status, lines


async def test_ctrl_c_while_dev_dials_drains_and_exits_0() -> None:
    """Ctrl-C once the connector dials, before it is ready: the demo, still
    waiting for it, ends with it instead of raising that it never got ready."""
    cli = _command("dev", "--port", str(free_port()), "--api-port", str(free_port()))
    status, lines = await _interrupt_when(cli, "connector starting: dialing")
    assert status == 0, lines
    assert not any("Traceback" in line or "before it was ready" in line for line in lines), lines


async def test_ctrl_c_while_the_connector_is_imported_is_one_line_and_130() -> None:
    # -X importtime reports each import as it completes: the connector's own
    # (errors is among its first) means the rest of it is still loading.
    cli = _command(
        "run", "--handler", "tests.handlers:TestSource", python_flags=("-X", "importtime")
    )
    status, lines = await _interrupt_when(cli, "connector.errors")
    assert (status, lines) == (130, ["ablo-connector: interrupted"])


@pytest.mark.parametrize(
    ("log_format", "how"), [("text", "script"), ("json", "script"), ("text", "python -m")]
)
async def test_ctrl_c_while_a_command_starts_is_one_line_and_130(log_format: str, how: str) -> None:
    args = ["run", "--handler", "tests.slow_import:Source", "--log-format", log_format]
    cli = _command(*args) if how == "script" else Process(args, ENV)
    status, lines = await _interrupt_when(cli, "importing tests.slow_import")
    assert status == 130 and lines[0] == "importing tests.slow_import", lines
    (said,) = lines[1:]
    if log_format == "text":
        assert said == "ablo-connector: interrupted"
    else:
        line = json.loads(said)
        assert (line["message"], line["exit_status"], line["level"]) == (
            "interrupted",
            130,
            "error",
        )


async def test_ctrl_c_right_after_spawn_never_prints_a_traceback() -> None:
    for _ in range(3):
        cli = _command("run", "--handler", "tests.handlers:TestSource")
        await cli.start()
        try:
            cli.signal(signal.SIGINT)
            status = await cli.wait(30)
            output = cli.output().strip()
        finally:
            await cli.stop()
        # Before Python runs the script the signal's default ends it, silently
        # (a shell shows 130); once it runs, the one line. In between, while
        # the interpreter itself starts (its site module), CPython's own
        # handler is in place and CPython reports the interrupt, exit 1:
        # nothing of ours has run yet.
        if status == 1 and output.startswith("Fatal Python error: init_import_site"):
            assert "KeyboardInterrupt" in output and "/connector/" not in output, output
            continue
        assert (status, output) in ((-signal.SIGINT, ""), (130, "ablo-connector: interrupted"))


async def test_ctrl_c_once_serving_drains_as_sigterm_does() -> None:
    cli = _command(
        "run", "--handler", "tests.handlers:TestSource", "--base-url", "http://127.0.0.1:1"
    )
    status, lines = await _interrupt_when(cli, "connector starting")
    assert status == 0, lines
    assert any("SIGINT received: finishing in-flight requests" in line for line in lines)
    assert not any("Traceback" in line or "interrupted" in line for line in lines), lines


async def test_ctrl_c_during_dev_start_up_leaves_no_demo_database(tmp_path: Path) -> None:
    # Before the connector serves (130 at once) or just after (a drain, 0).
    cli = _command("dev", "--port", str(free_port()), "--api-port", str(free_port()))
    cli.env["TMPDIR"] = str(tmp_path)
    status, lines = await _interrupt_when(cli, "demo database: ")
    assert status in (0, 130), lines
    assert list(tmp_path.iterdir()) == []
