"""A chat message's `content` as the OpenAI SDK and agent frameworks send it: a string, or a list
of parts. Text parts (and an assistant's refusal parts) are joined with newlines, as vLLM joins them
for a chat template that takes a string; image, audio, video and file parts are refused, since
every polyhead backbone takes text only."""

from pydantic_core import PydanticCustomError

TEXT_PART_FIELDS = {"text": "text", "refusal": "refusal"}  # part type -> the field holding its text
NON_TEXT_PARTS = ("image_url", "input_image", "image", "input_audio", "audio", "video_url", "file")


def join_text_parts(parts: list) -> str:
    """The text of a list of content parts; a PydanticCustomError naming the part it cannot take."""
    if not parts:
        raise PydanticCustomError("empty_content", "is an empty list of parts: send at least one text part")
    texts = []
    for i, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in NON_TEXT_PARTS:
            raise PydanticCustomError("text_only", "part {index} has type {kind}, but this model takes text "
                                      "only: send parts of type text",
                                      {"index": i, "kind": kind})
        field = TEXT_PART_FIELDS.get(kind)
        if field is None:
            raise PydanticCustomError("content_part", "part {index} must be an object with a type of text "
                                      "(or refusal), got {got}", {"index": i, "got": repr(part)[:80]})
        text = part.get(field)
        if not isinstance(text, str):
            raise PydanticCustomError("content_part", "part {index} (type {kind}) needs a string {field}",
                                      {"index": i, "kind": kind, "field": field})
        texts.append(text)
    return "\n".join(texts)
