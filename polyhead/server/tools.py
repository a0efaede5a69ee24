"""Tool calling, request side: what `tools`, `tool_choice` and `parallel_tool_calls` change before a
chat request reaches the engine.

One call format throughout, Hermes' and Qwen2.5's: the model writes each call as
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`. A chat template that takes `tools`
(Qwen2.5's) renders the tools, the assistant's past calls and the `tool` replies itself; for a
template without them (the default model's) the tools go into the system message in that template's
own words (TOOLS_SYSTEM_PROMPT, docs/tools.md), past calls become the assistant's text and replies
become `<tool_response>` user turns, as Qwen2.5's template writes them. `required` and a named
function are enforced by a grammar (the engine's structured outputs); `auto` is parsed, not enforced.
"""

import functools
import json
import re
from dataclasses import dataclass, replace

import llguidance

from polyhead.engine.core.params import SamplingParams, StructuredOutput
from polyhead.engine.decoder.grammar_source import JSON_LAYOUT
from polyhead.server.errors import APIError
from polyhead.server.tool_protocol import NamedToolChoice, Tool

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"

# Qwen2.5's own text, so a model trained on either writes the same calls the parser reads.
TOOLS_SYSTEM_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>')


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """What a chat request's tool fields ask for, checked."""

    tools: tuple[Tool, ...]  # the tools offered; () when none are
    choice: str  # none | auto | required | named
    forced_name: str | None  # the function a named choice calls
    allows_parallel: bool  # False: at most one call per reply

    @classmethod
    def from_request(cls, tools: list[Tool] | None, choice, parallel_tool_calls: bool) -> "ToolPlan":
        tools = tuple(tools or ())
        names = [tool.function.name for tool in tools]
        duplicate = next((name for name in names if names.count(name) > 1), None)
        if duplicate is not None:
            raise APIError(400, f"tools: two tools are named {duplicate!r}; names must be unique", "tools")
        if choice is None:
            choice = "auto" if tools else "none"
        forced_name = None
        if isinstance(choice, NamedToolChoice):
            forced_name, choice = choice.function.name, "named"
            if forced_name not in names:
                raise APIError(400, f"tool_choice names the function {forced_name!r}, which is not among the "
                                    f"tools ({', '.join(names) or 'none given'})", "tool_choice")
        if choice in ("required", "named") and not tools:
            raise APIError(400, f"tool_choice {choice!r} needs at least one tool in tools", "tool_choice")
        for i, tool in enumerate(tools):
            _check_parameters(tool, i, is_enforced=choice == "required" or tool.function.name == forced_name)
        return cls(tools, choice, forced_name, parallel_tool_calls)

    @property
    def is_calling(self) -> bool:
        """Whether the model may call a tool, so its reply is read for calls."""
        return bool(self.tools) and self.choice != "none"

    @property
    def max_calls(self) -> int | None:
        return 1 if self.choice == "named" or not self.allows_parallel else None

    @property
    def names(self) -> frozenset[str]:
        return frozenset(tool.function.name for tool in self.tools)

    def constrain(self, params: SamplingParams) -> SamplingParams:
        """`required` and a named choice: the output is tool calls and nothing else."""
        if self.choice not in ("required", "named"):
            return params
        if params.structured is not None:
            raise APIError(400, f"tool_choice {self.choice!r} constrains the reply to tool calls; it cannot be "
                                "combined with response_format or structured_outputs (nor a task's own "
                                "response_format)", "tool_choice")
        return replace(params, structured=self.grammar())

    def grammar(self) -> StructuredOutput:
        """A Lark grammar (llguidance's dialect): one or more calls, each a JSON object whose name is one
        of the allowed functions and whose arguments follow that function's parameters schema, laid out
        as Qwen2.5's template writes a call (JSON_LAYOUT: a small model given free whitespace spends its
        tokens on it). Schema keywords the grammar engine does not implement are ignored unless every
        allowed tool is strict."""
        allowed = [t for t in self.tools if self.forced_name in (None, t.function.name)]
        layout = {**JSON_LAYOUT, "lenient": not all(t.function.strict for t in allowed)}
        call = {"x-guidance": layout, "anyOf": [_call_schema(tool) for tool in allowed]}
        many = "" if self.max_calls == 1 else ' ("\\n" tool_call)*'
        lark = (f"start: tool_call{many}\n"
                f'tool_call: "{TOOL_CALL_OPEN}\\n" %json {json.dumps(call)} "\\n{TOOL_CALL_CLOSE}"\n')
        return StructuredOutput("grammar", lark)


def _check_parameters(tool: Tool, index: int, is_enforced: bool) -> None:
    """The parameters are an object's schema; one the grammar will enforce must also compile, and its
    error names the tool (the engine's would name only the whole tool-call grammar)."""
    parameters, param = tool.function.parameters, f"tools.{index}.function.parameters"
    if parameters is None:
        return
    if parameters.get("type", "object") != "object":
        raise APIError(400, f"{param}: must describe an object (the arguments), not type {parameters['type']!r}",
                       param)
    if is_enforced:
        error = _schema_error(json.dumps(parameters, sort_keys=True), bool(tool.function.strict))
        if error:
            raise APIError(400, f"{param}: this schema cannot be enforced: {error}", param)


@functools.lru_cache(maxsize=256)
def _schema_error(schema: str, is_strict: bool) -> str:
    """llguidance's complaint about a JSON schema, "" when it compiles (clients resend the same tools)."""
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
        llguidance.LLMatcher.grammar_from_json_schema(schema, overrides={"lenient": not is_strict}))
    return messages[0] if is_error else ""


def _call_schema(tool: Tool) -> dict:
    parameters = tool.function.parameters or {"type": "object", "properties": {}}
    return {"type": "object", "properties": {"name": {"const": tool.function.name}, "arguments": parameters},
            "required": ["name", "arguments"], "additionalProperties": False}


def chat_messages(messages: list[dict], plan: ToolPlan, tokenizer) -> tuple[list[dict], list[dict] | None]:
    """The messages (ChatMessage dumps) and the `tools` argument for the tokenizer's chat template."""
    offered = [tool.schema() for tool in plan.tools] if plan.is_calling else []
    messages = [_clean(m, i) for i, m in enumerate(messages)]
    if template_takes_tools(getattr(tokenizer, "chat_template", None)):
        return messages, offered or None
    rendered: list[dict] = []
    for i, message in enumerate(messages):
        if message["role"] == "tool":
            reply = f"<tool_response>\n{message['content']}\n</tool_response>"
            if i and messages[i - 1]["role"] == "tool":  # consecutive replies share one user turn
                rendered[-1]["content"] += f"\n{reply}"
            else:
                rendered.append({"role": "user", "content": reply})
        elif "tool_calls" in message:
            calls = "\n".join(_call_text(call["function"]["name"], call["function"]["arguments"])
                              for call in message["tool_calls"])
            text = message["content"]
            rendered.append({"role": "assistant", "content": f"{text}\n{calls}" if text else calls})
        else:
            rendered.append({key: value for key, value in message.items() if key != "tool_call_id"})
    if offered:
        rendered = _with_tools_system_prompt(rendered, offered)
    return rendered, None


def _clean(message: dict, index: int) -> dict:
    """A message as templates read it: the fields it has (content at least, "" when absent, None only
    beside tool calls); an assistant's past calls with their arguments as objects (tool-aware
    templates write them with `tojson`). tool_calls on another role mean nothing and are ignored,
    as unknown fields are."""
    calls = message.get("tool_calls") if message["role"] == "assistant" else None
    out = {key: value for key, value in message.items() if value is not None and key != "tool_calls"}
    out["content"] = message.get("content") if calls else message.get("content") or ""
    if message["role"] != "tool":
        out.pop("tool_call_id", None)
    if calls:
        out["tool_calls"] = [{**call, "function": {**call["function"], "arguments": _arguments(call, index, j)}}
                             for j, call in enumerate(calls)]
    return out


def _arguments(call: dict, message_index: int, call_index: int):
    try:
        return json.loads(call["function"]["arguments"])
    except json.JSONDecodeError as err:
        param = f"messages.{message_index}.tool_calls.{call_index}.function.arguments"
        raise APIError(400, f"{param}: not valid JSON ({err.msg} at character {err.pos})", param) from None


def _call_text(name: str, arguments) -> str:
    """A call as Qwen2.5's template writes it, and as the model is asked to."""
    arguments = json.dumps(arguments, ensure_ascii=False)
    return f'{TOOL_CALL_OPEN}\n{{"name": "{name}", "arguments": {arguments}}}\n{TOOL_CALL_CLOSE}'


def _with_tools_system_prompt(messages: list[dict], offered: list[dict]) -> list[dict]:
    signatures = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in offered)
    tools_text = TOOLS_SYSTEM_PROMPT.format(tools=signatures)
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{messages[0]['content']}\n\n{tools_text}"}, *messages[1:]]
    return [{"role": "system", "content": tools_text}, *messages]


def template_takes_tools(template: str | dict | None) -> bool:
    """Whether a chat template reads the `tools` variable (a dict of named templates: any of them)."""
    if isinstance(template, dict):
        return any(_reads_tools(t) for t in template.values())
    return bool(template) and _reads_tools(template)


@functools.lru_cache(maxsize=16)
def _reads_tools(template: str) -> bool:
    import jinja2
    from jinja2 import meta

    try:
        return "tools" in meta.find_undeclared_variables(jinja2.Environment(extensions=["jinja2.ext.loopcontrols"])
                                                         .parse(template))
    except jinja2.TemplateSyntaxError:  # a tag only transformers knows ({% generation %}): read it as text
        return re.search(r"\btools\b", template) is not None
