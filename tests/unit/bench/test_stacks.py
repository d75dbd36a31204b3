from bench.stacks import costs, key_of, report

PROFILE = [
    'process 1:"python";main (cli.py:10);send_message (/work/main/services/message/app.py:150);'
    "execute (/x/site-packages/sqlalchemy/engine.py:5) 6",
    'process 1:"python";main (cli.py:10);send_message (/work/main/services/message/app.py:150) 2',
    'process 1:"python";main (cli.py:10);push (/work/main/services/delivery/hub.py:120) 2',
    "",
    "garbage line",
]


def test_frames_are_keyed_by_function_and_short_path_or_by_file() -> None:
    frame = "send_message (/work/main/services/message/app.py:150)"
    assert key_of(frame, by="function") == "send_message (services/message/app.py)"
    assert key_of(frame, by="file") == "services/message/app.py"


def test_inclusive_counts_every_frame_on_the_stack_and_self_only_the_innermost() -> None:
    found = costs(PROFILE)
    assert found.total == 10
    assert found.inclusive["send_message (services/message/app.py)"] == 8
    assert found.own["send_message (services/message/app.py)"] == 2
    assert found.own["execute (sqlalchemy/engine.py)"] == 6
    assert found.inclusive["main (cli.py)"] == 10


def test_report_ranks_costs_in_percent_of_samples() -> None:
    text = report(costs(PROFILE, by="file"), top=2)
    assert text.splitlines()[0] == "10 samples"
    assert "100.0%  cli.py" in text
    assert " 60.0%  sqlalchemy/engine.py" in text
