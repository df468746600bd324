"""course_lib.chat_format: every problem is reported with its place; valid chats pass untouched."""
import json

from hypothesis import given, strategies as st

from course_lib.chat_format import chat_problems, messages, validate_file, validate_lines


def _chat(*roles, content="x"):
    return {"messages": [{"role": r, "content": content} for r in roles]}


def _fields(record):
    return [(p.field, p.message) for p in chat_problems(record, "f.jsonl:1")]


def test_valid_chats_have_no_problem():
    for roles in [("user", "assistant"), ("system", "user", "assistant"),
                  ("system", "user", "assistant", "user", "assistant")]:
        assert chat_problems(_chat(*roles)) == []


def test_each_kind_of_problem_names_its_field():
    assert _fields({"msgs": []}) == [("messages", "missing key")]
    assert _fields({"messages": []})[0][0] == "messages"
    assert ("messages[1].role", "unknown role 'bot' (expected one of system, user, assistant)") in \
        _fields({"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]})
    assert ("messages[1].content", "empty") in _fields(_chat("user", "assistant", content=" "))
    assert ("messages[0].content", "expected a string, got int") in \
        _fields({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "b"}]})
    assert ("messages[1].content", "missing key") in _fields({"messages": [{"role": "user", "content": "a"}, {"role": "assistant"}]})
    assert ("messages[0].name", "unknown key (only 'role' and 'content' are allowed)") in \
        _fields({"messages": [{"role": "user", "content": "a", "name": "x"}, {"role": "assistant", "content": "b"}]})


def test_turn_order_is_checked_everywhere_not_only_in_one_turn_chats():
    assert any("last turn must be the assistant" in m for _, m in _fields(_chat("user")))
    assert any(f == "messages[2].role" for f, _ in _fields(_chat("user", "assistant", "assistant")))
    assert any(f == "messages[1].role" for f, _ in _fields(_chat("user", "user", "assistant")))
    assert any("system message may only come first" in m for _, m in _fields(_chat("user", "system", "assistant")))
    assert any(f == "messages[0].role" for f, _ in _fields(_chat("assistant", "user", "assistant")))
    assert any("no user or assistant turn" in m for _, m in _fields(_chat("system")))


def test_too_long_in_tokens_with_the_chat_template(tiny):
    _, tokenizer = tiny
    chat = _chat("user", "assistant", content="word " * 50)
    assert chat_problems(chat, tokenizer=tokenizer, max_tokens=1000) == []
    (problem,) = chat_problems(chat, "f:3", tokenizer=tokenizer, max_tokens=20)
    assert problem.where == "f:3" and "more than 20" in problem.message


def test_files_report_every_line_and_keep_only_valid_chats(tmp_path):
    lines = [json.dumps(_chat("user", "assistant")), "not json", "", json.dumps(_chat("user")), json.dumps([1])]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines))
    valid, problems = validate_file(path)
    assert valid == [_chat("user", "assistant")]
    assert [str(p).split(": ")[0] for p in problems] == [f"{path}:2", f"{path}:4", f"{path}:5"]
    path.write_bytes(b"\xff\xfe")
    assert "not valid UTF-8" in str(validate_file(path)[1][0])


_message = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "bot"]),
                                  "content": st.one_of(st.text(max_size=5), st.integers())})


@given(st.lists(_message, max_size=6))
def test_a_chat_is_valid_exactly_when_it_follows_every_rule(messages):
    roles = [m["role"] for m in messages]
    turns = roles[1:] if roles[:1] == ["system"] else roles
    expected_valid = (bool(turns) and all(r == ("user", "assistant")[i % 2] for i, r in enumerate(turns))
                      and turns[-1] == "assistant"
                      and all(isinstance(m["content"], str) and m["content"].strip() for m in messages))
    problems = chat_problems({"messages": messages})
    assert (problems == []) == expected_valid
    valid, reported = validate_lines([json.dumps({"messages": messages})], "h")
    assert (valid != []) == expected_valid and all(p.where == "h:1" for p in reported)


def test_messages_builds_one_exchange_that_the_validator_accepts():
    example = messages("my card was charged twice", "billing", system="Classify the ticket.")
    assert [m["role"] for m in example] == ["system", "user", "assistant"] and example[2]["content"] == "billing"
    assert chat_problems({"messages": example}) == []
    prompt = messages("my card was charged twice")  # a prompt: no system message, ends with the user
    assert prompt == [{"role": "user", "content": "my card was charged twice"}]
    assert messages("hi", "")[-1] == {"role": "assistant", "content": ""}  # an empty reply is a turn
