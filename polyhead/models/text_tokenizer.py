"""A model's tokenizer and chat template without transformers, for the HTTP process.

With every engine in a child process, the HTTP process only turns text into token ids and back and
renders chat templates. transformers imports torch as soon as it is imported (when torch is
installed), and torch alone holds ~300 MB resident: the HTTP process would carry it for nothing.
So this reads the folder's `tokenizer.json` with Hugging Face's `tokenizers` (the Rust library
transformers' fast tokenizers wrap) and renders the chat template with jinja2 in the sandboxed
environment transformers uses (same options, filters and globals), as TGI's router does.
`tests/models/test_text_tokenizer.py` checks ids and rendered prompts against transformers.

It offers the subset of transformers' tokenizer interface the server uses: `encode`, `__call__`
(ids, offsets, truncation), `decode`, `convert_ids_to_tokens`, `apply_chat_template` (with tools).
"""

import json
from datetime import datetime
from functools import cached_property
from pathlib import Path

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

# tokenizer_config.json entries a chat template may read (transformers passes them as variables)
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class TextTokenizer:
    def __init__(self, folder: str | Path):
        folder = Path(folder)
        if not (folder / "tokenizer.json").is_file():
            raise ValueError(f"{str(folder)!r} has no tokenizer.json (a fast tokenizer), which the server reads")
        self.name_or_path = str(folder)
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # a saved tokenizer.json may pad or cut every input (all-MiniLM-L6-v2's pads to 128); like
        # transformers, pad and cut only when a call asks
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        config = _read_json(folder / "tokenizer_config.json")
        self.special_tokens = {name: _token_text(config.get(name)) for name in SPECIAL_TOKEN_NAMES
                               if config.get(name) is not None}
        self.additional_special_tokens = [_token_text(t) for t in config.get("additional_special_tokens") or []]
        self.chat_template = _chat_template(folder, config)
        self.eos_token = self.special_tokens.get("eos_token")
        self.eos_token_id = None if self.eos_token is None else self._tokenizer.token_to_id(self.eos_token)

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def __call__(self, text: str, add_special_tokens: bool = True, truncation: bool = False,
                 max_length: int | None = None, return_offsets_mapping: bool = False) -> "TextEncoding":
        # encoded without special tokens, cut, then wrapped: truncation keeps the [CLS] ... [SEP] a
        # model expects, as transformers' does (longest_first on a single text)
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        if truncation and max_length is not None:
            num_special = self._tokenizer.num_special_tokens_to_add(False) if add_special_tokens else 0
            encoding.truncate(max(max_length - num_special, 0))
        if add_special_tokens:
            encoding = self._tokenizer.post_process(encoding, add_special_tokens=True)
        out = TextEncoding(input_ids=encoding.ids)
        if return_offsets_mapping:
            out["offset_mapping"] = list(encoding.offsets)
        out.word_id_list = encoding.word_ids
        return out

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        del clean_up_tokenization_spaces  # off in every tokenizer the server loads (transformers 5's default)
        return self._tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, token_ids: list[int]) -> list[str | None]:
        return [self._tokenizer.id_to_token(i) for i in token_ids]

    def apply_chat_template(self, messages: list[dict], tools: list[dict] | None = None,
                            add_generation_prompt: bool = False, tokenize: bool = True, **kwargs) -> list[int] | str:
        """The prompt the model's chat template renders, as ids (tokenize) or text. Raises
        ValueError when the model has no template or the template refuses the messages."""
        if not self.chat_template:
            raise ValueError("this model has no chat template")
        variables = {**self.special_tokens, "additional_special_tokens": self.additional_special_tokens, **kwargs}
        try:
            text = self._template.render(messages=messages, tools=tools, documents=None,
                                         add_generation_prompt=add_generation_prompt, **variables)
        except jinja2.TemplateError as err:
            raise ValueError(f"the chat template refused these messages: {err}") from None
        return self.encode(text, add_special_tokens=False) if tokenize else text

    @cached_property
    def _template(self) -> jinja2.Template:
        return _template_environment().from_string(self.chat_template)


class TextEncoding(dict):
    """input_ids (and offset_mapping when asked), with each token's word as `word_ids()`, like
    transformers' BatchEncoding for one text."""

    word_id_list: list[int | None]

    def word_ids(self) -> list[int | None]:
        return self.word_id_list


def _template_environment() -> ImmutableSandboxedEnvironment:
    """As transformers' `_compile_jinja_template`: the options, filters and globals chat templates
    on the Hub are written against."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda format: datetime.now().strftime(format)
    env.globals["dict"] = dict
    env.globals["namespace"] = _Namespace
    return env


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # jinja's own tojson escapes HTML characters, which would change the prompt
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


class _Namespace(jinja2.utils.Namespace):
    """jinja's namespace without underscore attributes: a template cannot reach interpreter internals."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


def _check_name(name) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(f"a chat template may not set the attribute {name!r} on a namespace")


def _chat_template(folder: Path, config: dict) -> str | None:
    # transformers 5 saves it beside the config as chat_template.jinja; older folders keep it inline
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template


def _token_text(token) -> str:
    return token["content"] if isinstance(token, dict) else token  # an AddedToken as saved, or plain text


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
