"""Chat formats: a dialog becomes one token sequence that ends where the assistant should speak.

Llama 3 tokenizers get Llama 3's header tokens, written out here:

    <|begin_of_text|>
    <|start_header_id|>system<|end_header_id|>\\n\\n You are terse.<|eot_id|>
    <|start_header_id|>user<|end_header_id|>\\n\\n Hi!<|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>\\n\\n      <- the model writes from here, ends with <|eot_id|>

Same ids as llama_models.llama3.chat_format.ChatFormat.encode_dialog_prompt for text-only messages.

Other tokenizers from GGUF files use the file's own jinja template (tokenizer.chat_template; SmolLM2's is
ChatML: <|im_start|>user\nHi!<|im_end|>\n ... <|im_start|>assistant\n). The template is rendered with a
sentinel in place of each content: the template's own text may produce special tokens, the contents only plain
text, so a user cannot forge a turn boundary; otherwise the ids equal transformers' apply_chat_template.
"""
import re

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
    """[{"role", "content"}, ...] -> ids that end where the assistant speaks, in the tokenizer's own format:
    Llama 3's (<|begin_of_text|>, every message, the assistant header), else the GGUF file's chat template."""
    if not isinstance(dialog, (list, tuple)) or not dialog:
        raise ValueError(f"dialog must be a non-empty list of {{'role', 'content'}} dicts, got {dialog!r}")
    for n, message in enumerate(dialog):
        check_message(message, n)
    if "<|start_header_id|>" not in tok.special_tokens and getattr(tok, "chat_template", None):
        return encode_template(tok, dialog)
    if "<|start_header_id|>" not in tok.special_tokens:
        raise ValueError(f"{tok.path} has neither Llama 3's header tokens nor a chat template "
                         "(tokenizer.chat_template): no chat format to use; it is a base model, prompt it with text")
    ids = [tok.bos_id]
    for message in dialog:
        ids += encode_message(tok, message)
    return ids + encode_header(tok, "assistant")


def render_template(tok, dialog):
    """The template rendered as transformers does (sandboxed jinja, trim_blocks, lstrip_blocks), each content
    swapped for a sentinel -> [template text, content, template text, content, ..., template text]. The
    sentinel is padded with spaces: when the template trims it (Llama 3's does), the content is trimmed too."""
    import jinja2.ext
    import jinja2.sandbox

    def raise_exception(message):
        raise ValueError(f"the chat template of {tok.path} refuses this dialog: {message}")
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols])
    env.globals["raise_exception"] = raise_exception
    template = env.from_string(tok.chat_template)
    names = {v: k for k, v in tok.special_tokens.items()}

    def render(contents):
        messages = [{"role": m["role"], "content": c} for m, c in zip(dialog, contents)]
        return template.render(messages=messages, add_generation_prompt=True,
                               bos_token=names.get(tok.bos_id, ""), eos_token=names.get(tok.eos_id, ""))
    # NUL: in no template; a message's number between two, padded with a space each side
    parts = re.split("( ?)\x00(\\d+)\x00( ?)", render([f" \x00{n}\x00 " for n in range(len(dialog))]))
    out, order = [parts[0]], []
    for pre, n, post, after in zip(*[iter(parts[1:])] * 4):
        content = dialog[int(n)]["content"]
        if not post:                          # trimmed: a space before it is the template's own
            out[-1], content = out[-1] + pre, content.strip()
        out += [content, after]
        order.append(int(n) if pre or not post else -1)
    if order != list(range(len(dialog))) or "".join(out) != render([m["content"] for m in dialog]):
        raise ValueError(f"the chat template of {tok.path} does not place each message's content once, in "
                         "order and unchanged (or trimmed): we cannot keep its contents apart from its own text")
    return out


def encode_template(tok, dialog):
    """Ids of the rendered template: special-token names in its own text become their ids; everything between
    them (template text and contents together, as transformers tokenizes it) is plain text."""
    names = sorted(tok.special_tokens, key=len, reverse=True)
    special = re.compile("(" + "|".join(map(re.escape, names)) + ")")
    ids, text = [], ""
    for k, part in enumerate(render_template(tok, dialog)):
        if k % 2:                     # a message's content: plain text, whatever it holds
            text += part
            continue
        for j, piece in enumerate(special.split(part)):
            if j % 2:
                ids += tok.encode(text, bos=False) + [tok.special_tokens[piece]]
                text = ""
            else:
                text += piece
    return ids + tok.encode(text, bos=False)


def chat(weights, args, tok, dialog, max_new_tokens=256, **sampling):
    """The assistant's reply to dialog; generation stops at the end of its turn (tok.eot_id: <|eot_id|>,
    ChatML's <|im_end|>) or at the end of text (tok.stop_tokens)."""
    return generate(weights, args, tok, encode_dialog(tok, dialog), max_new_tokens, **sampling)
