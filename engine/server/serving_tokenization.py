"""The tokenizer endpoints lm-evaluation-harness's remote tokenizer uses: ``GET /tokenizer_info``,
``POST /tokenize`` (text, or a chat: the tokens ``/v1/chat/completions`` runs for it), ``POST
/detokenize``. No special tokens are ever added to a text."""
from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from . import chat as chat_format
from .schemas import (CHARS_PER_TOKEN_BOUND, ApiError, DetokenizeRequest, TokenizeRequest, chat_prompt_tokens,
                      check_model, check_token_ids, parse)
from .server import Server


async def tokenizer_info(server: Server, request: Request) -> JSONResponse:
    config = server.config
    end = server.token_bytes[0]
    return JSONResponse({
        "tokenizer_class": server.tokenizer.name, "vocab_size": server.tokenizer.vocab_size,
        # token 0 ends a document; it has a text form only where it is a byte (vocabulary 256)
        "eos_token": end.decode("latin-1") if end else None, "eos_token_id": 0,
        "bos_token": None, "pad_token": None, "model_max_length": config.max_model_len,
        "chat_template": chat_format.JINJA_TEMPLATE,
    })


async def tokenize(server: Server, request: Request) -> JSONResponse:
    config = server.config
    body = parse(TokenizeRequest, await server.read_json(request))
    check_model(body.model, config)
    if (body.prompt is None) == (body.messages is None):
        raise ApiError("send exactly one of 'prompt' (text) and 'messages' (a chat)", param="prompt")
    if body.messages is not None:  # the chat prompt, as /v1/chat/completions runs it (token 0 first)
        tokens = chat_prompt_tokens([(m.role, m.text()) for m in body.messages], server.tokenizer, config,
                                    limit=False)
        return JSONResponse({"tokens": tokens, "count": len(tokens), "max_model_len": config.max_model_len})
    text = body.prompt
    if len(text) > CHARS_PER_TOKEN_BOUND * config.max_prompt_tokens:
        raise ApiError(f"the text has {len(text)} characters, more than /tokenize accepts "
                       f"({CHARS_PER_TOKEN_BOUND * config.max_prompt_tokens})", param="prompt")
    tokens = list(server.tokenizer.encode(text))
    return JSONResponse({"tokens": tokens, "count": len(tokens), "max_model_len": config.max_model_len})


async def detokenize(server: Server, request: Request) -> JSONResponse:
    config = server.config
    body = parse(DetokenizeRequest, await server.read_json(request))
    check_model(body.model, config)
    ids = check_token_ids(body.tokens, server.tokenizer.vocab_size, "tokens")
    return JSONResponse({"prompt": server.tokenizer.decode(ids)})
