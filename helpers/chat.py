"""The Llama 3 chat format: a dialog becomes one token sequence that ends where the assistant should speak.

    <|begin_of_text|>
    <|start_header_id|>system<|end_header_id|>\\n\\n You are terse.<|eot_id|>
    <|start_header_id|>user<|end_header_id|>\\n\\n Hi!<|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>\\n\\n      <- the model writes from here, ends with <|eot_id|>

Same ids as llama_models.llama3.chat_format.ChatFormat.encode_dialog_prompt for text-only messages.
"""
from helpers.generate import generate

ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "ipython", "ipython": "ipython"}


def encode_header(tok, role):
    """<|start_header_id|>role<|end_header_id|> then a blank line."""
    return ([tok.special_tokens["<|start_header_id|>"]] + tok.encode(ROLES[role], bos=False)
            + [tok.special_tokens["<|end_header_id|>"]] + tok.encode("\n\n", bos=False))


def check_message(message, n):
    if not isinstance(message, dict) or set(message) - {"role", "content"} or "role" not in message \
            or "content" not in message:
        raise ValueError(f"dialog[{n}] = {message!r}: each message must be a dict with exactly "
                         "'role' and 'content', e.g. {'role': 'user', 'content': 'Hi'}")
    if message["role"] not in ROLES:
        raise ValueError(f"dialog[{n}]: role {message['role']!r} is not one of {sorted(ROLES)}")
    if not isinstance(message["content"], str):
        raise ValueError(f"dialog[{n}]: content must be a str, got {type(message['content']).__name__}")


def encode_message(tok, message):
    """header + content + <|eot_id|>. Special-token strings inside content stay plain text."""
    return encode_header(tok, message["role"]) + tok.encode(message["content"], bos=False) + [tok.eot_id]


def encode_dialog(tok, dialog):
    """[{"role", "content"}, ...] -> ids: <|begin_of_text|>, every message, then the assistant header."""
    if not isinstance(dialog, (list, tuple)) or not dialog:
        raise ValueError(f"dialog must be a non-empty list of {{'role', 'content'}} dicts, got {dialog!r}")
    ids = [tok.bos_id]
    for n, message in enumerate(dialog):
        check_message(message, n)
        ids += encode_message(tok, message)
    return ids + encode_header(tok, "assistant")


def chat(weights, args, tok, dialog, max_new_tokens=256, **sampling):
    """The assistant's reply to dialog; generation stops at <|eot_id|> (or <|end_of_text|>)."""
    return generate(weights, args, tok, encode_dialog(tok, dialog), max_new_tokens, **sampling)
