"""Tokenizers for BERT, RoBERTa and GPT-2 checkpoint folders, built on the `tokenizers` library.

`load_tokenizer(folder)` reads, in this order of preference:
  - `tokenizer.json` (used as is),
  - `vocab.txt` (BERT WordPiece),
  - `vocab.json` + `merges.txt` (byte-level BPE, RoBERTa or GPT-2 flavour),
and builds the same pipeline transformers' fast tokenizers build from those files, so ids,
offsets, token type ids and special-token masks match transformers token for token.
`tokenizer_config.json`, `special_tokens_map.json` and `config.json` next to them supply
special tokens, lower-casing and `model_max_length` when present; the added tokens of a
vocabulary-file folder come from `tokenizer_config.json`'s `added_tokens_decoder`, or else
from the older `added_tokens.json`, and must keep the ids those files give them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Encoding, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, WordPiece

from hone.errors import HoneError

__all__ = ["HoneTokenizer", "TokenizerError", "load_tokenizer"]

SPECIAL_NAMES = ("cls_token", "sep_token", "pad_token", "mask_token", "bos_token", "eos_token", "unk_token")
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second")
EXPECTED_FILES = "tokenizer.json, or vocab.txt (BERT WordPiece), or vocab.json + merges.txt (byte-level BPE)"

# Special tokens of each flavour, as transformers' BertTokenizerFast / RobertaTokenizerFast /
# GPT2TokenizerFast define them.
FLAVOUR_SPECIALS: dict[str, dict[str, str | None]] = {
    "wordpiece": {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "mask_token": "[MASK]",
                  "unk_token": "[UNK]"},
    "roberta": {"cls_token": "<s>", "sep_token": "</s>", "pad_token": "<pad>", "mask_token": "<mask>",
                "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "gpt2": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
             "pad_token": None},
}
FLAVOUR_CLASS = {"wordpiece": "BertTokenizer", "roberta": "RobertaTokenizer", "gpt2": "GPT2Tokenizer"}
# Used only when neither tokenizer_config.json nor config.json says: the released models' limits.
FLAVOUR_MAX_LENGTH = {"wordpiece": 512, "roberta": 512, "gpt2": 1024}
UNSET_MAX_LENGTH = int(1e29)  # transformers writes 1e30 for "no limit known"


class TokenizerError(HoneError, ValueError):
    """A tokenizer folder or file that cannot be loaded, or an invalid encode request."""


class HoneTokenizer:
    """A `tokenizers.Tokenizer` plus what a model needs to know about it (special ids, max length).

    `.backend` never has truncation or padding enabled: truncated encodes run on cached copies,
    so the shared backend can be handed to anyone without hidden state.
    """

    def __init__(self, backend: Tokenizer, *, kind: str, flavour: str | None,
                 special_tokens: dict[str, AddedToken | None], model_max_length: int,
                 do_lower_case: bool | None = None, tokenizer_class: str | None = None):
        backend.no_truncation()
        backend.no_padding()
        self.backend = backend
        self.kind = kind  # "wordpiece" | "roberta" | "gpt2" | "tokenizer.json": which file it came from
        self.flavour = flavour  # "wordpiece" | "roberta" | "gpt2" | None: which pipeline it is
        self.special_tokens = special_tokens
        self.model_max_length = model_max_length
        self.do_lower_case = do_lower_case
        self.tokenizer_class = tokenizer_class or FLAVOUR_CLASS.get(flavour, "PreTrainedTokenizerFast")
        self._truncating: dict[tuple[int, int, str], Tokenizer] = {}
        for name in SPECIAL_NAMES:
            token = special_tokens.get(name)
            setattr(self, name, None if token is None else token.content)
            setattr(self, f"{name}_id", None if token is None else backend.token_to_id(token.content))

    def __repr__(self) -> str:
        return (f"HoneTokenizer(kind={self.kind!r}, flavour={self.flavour!r}, vocab_size={self.vocab_size}, "
                f"model_max_length={self.model_max_length})")

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def vocab_size(self) -> int:
        """Size of the id space, added tokens included (transformers' `len(tokenizer)`)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, pair: str | None = None, **kwargs: Any) -> Encoding:
        """Encode one text (or text pair); keyword arguments as in `encode_batch`."""
        return self.encode_batch([text], None if pair is None else [pair], **kwargs)[0]

    def encode_batch(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
                     add_special_tokens: bool = True, max_length: int | None = None, stride: int = 0,
                     truncation: str | bool | None = None) -> list[Encoding]:
        """Encode texts (and their pairs). With truncation, the windows that did not fit are in each
        encoding's `.overflowing`, consecutive windows sharing `stride` tokens, as in transformers'
        `return_overflowing_tokens=True`. `max_length` alone implies "longest_first"; a truncation
        strategy alone truncates to `model_max_length`."""
        if isinstance(texts, str) or (pairs is not None and isinstance(pairs, str)):
            raise TokenizerError("encode_batch takes a list of texts; use encode() for a single text")
        if pairs is not None and len(pairs) != len(texts):
            raise TokenizerError(f"encode_batch got {len(texts)} texts but {len(pairs)} pairs; pass one pair per text")
        inputs = list(texts) if pairs is None else list(zip(texts, pairs))
        backend = self._backend_for(max_length, stride, truncation)
        try:
            return backend.encode_batch(inputs, add_special_tokens=add_special_tokens)
        except BaseException as err:
            # tokenizers raises a bare Exception (a question longer than max_length) or, when a window
            # has no more room than `stride`, a Rust panic that is not an Exception subclass
            if not isinstance(err, Exception) and type(err).__name__ != "PanicException":
                raise
            raise TokenizerError(f"tokenization failed (max_length={max_length}, stride={stride}, "
                                 f"truncation={truncation!r}): {err}; raise max_length or lower stride so "
                                 "each window has room for more than `stride` tokens") from err

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def save(self, path: str | Path) -> Path:
        """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json and the vocabulary files
        (vocab.txt, or vocab.json + merges.txt) so that transformers' AutoTokenizer loads the folder."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(out / "tokenizer.json"))
        _write_json(out / "tokenizer_config.json", self._tokenizer_config())
        special_map = {name: _token_json(tok) for name, tok in self.special_tokens.items() if tok is not None}
        _write_json(out / "special_tokens_map.json", special_map)
        model = json.loads(self.backend.to_str())["model"]
        if model["type"] == "WordPiece":
            (out / "vocab.txt").write_text("".join(f"{t}\n" for t in _tokens_by_id(model["vocab"])), encoding="utf-8")
        elif model["type"] == "BPE":
            _write_json(out / "vocab.json", model["vocab"])
            merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
            (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{m}\n" for m in merges), encoding="utf-8")
        return out

    def _backend_for(self, max_length: int | None, stride: int, truncation: str | bool | None) -> Tokenizer:
        """The backend itself when not truncating, else a cached copy configured for this truncation."""
        if truncation is True or (truncation is None and max_length is not None):
            truncation = "longest_first"
        if truncation is None or truncation is False:
            return self.backend
        if truncation not in TRUNCATION_STRATEGIES:
            raise TokenizerError(f"truncation={truncation!r} is not one of {TRUNCATION_STRATEGIES} (or None)")
        max_length = self.model_max_length if max_length is None else max_length
        key = (max_length, stride, truncation)
        if key not in self._truncating:
            if len(self._truncating) >= 8:  # bound the cache; settings rarely vary within a run
                self._truncating.clear()
            copy = Tokenizer.from_str(self.backend.to_str())
            try:
                copy.enable_truncation(max_length, stride=stride, strategy=truncation)
            except Exception as err:
                raise TokenizerError(f"invalid truncation settings max_length={max_length}, "
                                     f"stride={stride}: {err}") from err
            self._truncating[key] = copy
        return self._truncating[key]

    def _tokenizer_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"tokenizer_class": self.tokenizer_class, "model_max_length": self.model_max_length}
        state = json.loads(self.backend.to_str())
        normalizer, pre_tokenizer, post = state["normalizer"], state["pre_tokenizer"], state["post_processor"]
        if normalizer and normalizer["type"] == "BertNormalizer":  # transformers rebuilds it from these keys
            config.update(do_lower_case=normalizer["lowercase"], strip_accents=normalizer["strip_accents"],
                          tokenize_chinese_chars=normalizer["handle_chinese_chars"])
        elif self.do_lower_case is not None:
            config["do_lower_case"] = self.do_lower_case
        if pre_tokenizer and pre_tokenizer["type"] == "ByteLevel":
            config["add_prefix_space"] = pre_tokenizer["add_prefix_space"]
        if post and post["type"] == "RobertaProcessing":
            config["trim_offsets"] = post["trim_offsets"]
        for name in SPECIAL_NAMES:
            token = self.special_tokens.get(name)
            config[name] = None if token is None else token.content
        config["added_tokens_decoder"] = {
            str(i): _token_json(tok) for i, tok in sorted(self.backend.get_added_tokens_decoder().items())}
        return config


def load_tokenizer(path: str | Path) -> HoneTokenizer:
    """Load the tokenizer of a checkpoint folder (see the module docstring for the files it reads)."""
    folder = Path(path)
    if not folder.exists():
        raise TokenizerError(f"tokenizer folder {folder} does not exist; pass a folder holding {EXPECTED_FILES}")
    if not folder.is_dir():
        raise TokenizerError(f"{folder} is a file; pass the folder that holds it ({EXPECTED_FILES})")
    tok_config = _read_json_if_present(folder / "tokenizer_config.json")
    special_map = _read_json_if_present(folder / "special_tokens_map.json")
    model_config = _read_json_if_present(folder / "config.json")

    if (folder / "tokenizer.json").is_file():
        backend = _read_tokenizer_json(folder / "tokenizer.json")
        flavour, kind = _flavour_of(backend), "tokenizer.json"
        do_lower_case = tok_config.get("do_lower_case")
    elif (folder / "vocab.txt").is_file():
        flavour = kind = "wordpiece"
        do_lower_case = _lowercase_setting(folder, tok_config, model_config)
        unk = _content(special_map.get("unk_token", tok_config.get("unk_token", "[UNK]")))
        backend = _build_wordpiece(folder / "vocab.txt", tok_config, do_lower_case, unk)
    elif (folder / "vocab.json").is_file() or (folder / "merges.txt").is_file():
        vocab, merges = _read_bpe_files(folder)
        flavour = kind = _bpe_flavour(folder, vocab, tok_config, model_config)
        backend = _build_byte_level(vocab, merges, folder, tok_config)
        do_lower_case = None
    else:
        found = sorted(p.name for p in folder.iterdir())
        raise TokenizerError(f"no tokenizer files in {folder} (found: {found or 'nothing'}); expected {EXPECTED_FILES}")

    if kind != "tokenizer.json":  # tokenizer.json holds its added tokens itself
        _add_declared_tokens(backend, folder, tok_config, special_map)
    specials = _special_tokens(flavour, backend, tok_config, special_map)
    missing = [tok for tok in specials.values() if tok is not None and tok.content not in _added_contents(backend)]
    if missing:  # register them as unsplittable special tokens (existing ids are kept), as transformers does
        backend.add_special_tokens(missing)
    if kind == "roberta":  # the post-processor needs the ids, known only now
        backend.post_processor = processors.RobertaProcessing(
            (specials["sep_token"].content, backend.token_to_id(specials["sep_token"].content)),
            (specials["cls_token"].content, backend.token_to_id(specials["cls_token"].content)),
            trim_offsets=tok_config.get("trim_offsets", True),
            add_prefix_space=tok_config.get("add_prefix_space", False))
    elif kind == "wordpiece":
        cls, sep = specials["cls_token"].content, specials["sep_token"].content
        backend.post_processor = processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, backend.token_to_id(cls)), (sep, backend.token_to_id(sep))])
    return HoneTokenizer(backend, kind=kind, flavour=flavour, special_tokens=specials,
                         model_max_length=_model_max_length(flavour, tok_config, model_config),
                         do_lower_case=do_lower_case, tokenizer_class=tok_config.get("tokenizer_class"))


# ---------------------------------------------------------------------------------------------
# building the backends


def _build_wordpiece(vocab_file: Path, tok_config: dict, lowercase: bool, unk: str) -> Tokenizer:
    """BERT: BertNormalizer, BertPreTokenizer, WordPiece, WordPiece decoder (post-processor added later)."""
    try:
        lines = vocab_file.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise TokenizerError(f"{vocab_file} is not UTF-8 text ({err}); "
                             "re-save the vocabulary as UTF-8, one token a line") from err
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    if not lines:
        raise TokenizerError(f"{vocab_file} is empty; it must list the vocabulary, one token a line")
    vocab = {token: i for i, token in enumerate(lines)}
    if unk not in vocab:
        raise TokenizerError(f"{vocab_file} has no unknown token {unk!r}; add it to the vocabulary "
                             "or name the right one as unk_token in tokenizer_config.json")
    backend = Tokenizer(WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=tok_config.get("tokenize_chinese_chars", True),
        strip_accents=tok_config.get("strip_accents"), lowercase=lowercase)  # None: follows lowercase
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend


def _build_byte_level(vocab: dict[str, int], merges: list[tuple[str, str]], folder: Path,
                      tok_config: dict) -> Tokenizer:
    """RoBERTa / GPT-2: byte-level pre-tokenizer and decoder around a BPE model."""
    try:
        model = BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                    end_of_word_suffix="", fuse_unk=False)
    except Exception as err:
        raise TokenizerError(f"{folder / 'merges.txt'} does not fit {folder / 'vocab.json'} ({err}); "
                             "use the two files of the same release") from err
    backend = Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=tok_config.get("add_prefix_space", False))
    backend.decoder = decoders.ByteLevel()
    return backend


def _read_bpe_files(folder: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    if not vocab_file.is_file():
        raise TokenizerError(f"{merges_file} has no vocab.json beside it; byte-level BPE needs both files: "
                             "copy the matching vocab.json into the folder")
    if not merges_file.is_file():
        raise TokenizerError(f"{vocab_file} has no merges.txt beside it; byte-level BPE needs both files: "
                             "copy the matching merges.txt into the folder")
    vocab = _read_json(vocab_file)
    if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
        raise TokenizerError(f"{vocab_file} must be a JSON object mapping each token to its integer id")
    try:
        lines = merges_file.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise TokenizerError(f"{merges_file} is not UTF-8 text ({err}); re-save it as UTF-8") from err
    merges = []
    for number, line in enumerate(lines, 1):
        if not line or line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise TokenizerError(f"{merges_file} line {number} is {line!r}; each merge line must be two tokens "
                                 "separated by one space")
        merges.append((parts[0], parts[1]))
    return vocab, merges


def _read_tokenizer_json(file: Path) -> Tokenizer:
    _read_json(file)  # a clear message for broken JSON before tokenizers' own
    try:
        return Tokenizer.from_file(str(file))
    except Exception as err:
        raise TokenizerError(f"{file} is not a tokenizers serialization ({err}); re-save it with "
                             "tokenizers' Tokenizer.save or transformers' save_pretrained") from err


def _add_declared_tokens(backend: Tokenizer, folder: Path, tok_config: dict, special_map: dict) -> None:
    """Add the folder's declared added tokens in id order, as transformers does, checking each id.

    A token whose id does not come out as declared would look up the wrong embedding row,
    so that is an error rather than the silent renumbering transformers does.
    """
    if "added_tokens_decoder" in tok_config:
        source, declared = folder / "tokenizer_config.json", tok_config["added_tokens_decoder"]
        if not isinstance(declared, dict):
            raise TokenizerError(f"{source}: added_tokens_decoder must map ids to token objects; "
                                 "restore it from the original checkpoint")
        tokens = {}
        for key, spec in declared.items():
            try:
                flags = {f: bool(spec.get(f, False)) for f in ("single_word", "lstrip", "rstrip", "special")}
                tokens[int(key)] = AddedToken(spec["content"], normalized=bool(spec.get("normalized", True)), **flags)
            except (AttributeError, KeyError, TypeError, ValueError):
                raise TokenizerError(f"{source}: added_tokens_decoder entry {key!r} must be an integer id mapped to "
                                     '{"content": ..., "special": ...}; restore it from the original checkpoint'
                                     ) from None
    elif (folder / "added_tokens.json").is_file():
        source, declared = folder / "added_tokens.json", _read_json(folder / "added_tokens.json")
        if not isinstance(declared, dict) or not all(type(i) is int for i in declared.values()):
            raise TokenizerError(f"{source} must be a JSON object mapping each added token to its integer id")
        named = _named_special_contents(tok_config, special_map)
        tokens = {i: AddedToken(content, normalized=content not in named, special=content in named)
                  for content, i in declared.items()}
    else:
        return
    for index, token in sorted(tokens.items()):
        backend.add_tokens([token])
        given = backend.token_to_id(token.content)
        if given != index:
            raise TokenizerError(f"{source}: added token {token.content!r} has id {index}, but after the "
                                 f"{backend.get_vocab_size(with_added_tokens=False)}-token vocabulary and the "
                                 f"added tokens before it, it gets id {given}; the ids must continue the "
                                 "vocabulary without gaps (fix the ids, or save the tokenizer as tokenizer.json)")


def _named_special_contents(*sources: dict) -> set[str]:
    """The special tokens the config files name (cls_token ..., plus the extra/additional lists)."""
    named = set()
    for source in sources:
        extra = source.get("extra_special_tokens") or []
        if isinstance(extra, dict):  # transformers 5 also writes {name: token}
            extra = list(extra.values())
        for value in [*(source.get(k) for k in SPECIAL_NAMES), *(source.get("additional_special_tokens") or []),
                      *extra]:
            if isinstance(value, str) or (isinstance(value, dict) and "content" in value):
                named.add(_content(value))
    return named


# ---------------------------------------------------------------------------------------------
# reading settings


def _flavour_of(backend: Tokenizer) -> str | None:
    """Which standard pipeline a tokenizer.json holds, so it can be saved under the right class."""
    state = json.loads(backend.to_str())
    model, pre, post = state["model"]["type"], state["pre_tokenizer"] or {}, state["post_processor"] or {}
    if model == "WordPiece" and pre.get("type") == "BertPreTokenizer":
        return "wordpiece"
    if model == "BPE" and pre.get("type") == "ByteLevel":
        return "roberta" if post.get("type") == "RobertaProcessing" else "gpt2"
    return None


def _bpe_flavour(folder: Path, vocab: dict[str, int], tok_config: dict, model_config: dict) -> str:
    hint = f"{tok_config.get('tokenizer_class', '')} {model_config.get('model_type', '')}".lower()
    if "roberta" in hint:
        return "roberta"
    if "gpt2" in hint:
        return "gpt2"
    if "<s>" in vocab:
        return "roberta"
    if "<|endoftext|>" in vocab:
        return "gpt2"
    raise TokenizerError(f"{folder / 'vocab.json'} has neither '<s>' (RoBERTa) nor '<|endoftext|>' (GPT-2); "
                         "say which it is with a config.json holding \"model_type\": \"roberta\" or \"gpt2\"")


def _lowercase_setting(folder: Path, tok_config: dict, model_config: dict) -> bool:
    """do_lower_case from tokenizer_config.json, else config.json, else a cased/uncased name, else True."""
    for config in (tok_config, model_config):
        if config.get("do_lower_case") is not None:
            return bool(config["do_lower_case"])
    names = " ".join([folder.resolve().name, str(tok_config.get("name_or_path", "")),
                      str(model_config.get("_name_or_path", ""))]).lower()
    if "uncased" in names:
        return True
    return "cased" not in names


def _special_tokens(flavour: str | None, backend: Tokenizer, tok_config: dict,
                    special_map: dict) -> dict[str, AddedToken | None]:
    """Flavour defaults, overridden by tokenizer_config.json, overridden by special_tokens_map.json."""
    if flavour is None:  # an unknown tokenizer.json: recognise the usual token names it holds
        vocab = backend.get_vocab()
        defaults = {name: tok for spec in FLAVOUR_SPECIALS.values() for name, tok in spec.items()
                    if tok is not None and tok in vocab}
    else:
        defaults = dict(FLAVOUR_SPECIALS[flavour])
    values: dict[str, Any] = {**defaults,
                              **{k: tok_config[k] for k in SPECIAL_NAMES if k in tok_config},
                              **{k: special_map[k] for k in SPECIAL_NAMES if k in special_map}}
    added = {tok.content: tok for tok in backend.get_added_tokens_decoder().values()}
    specials: dict[str, AddedToken | None] = {}
    for name in SPECIAL_NAMES:
        value = values.get(name)
        if value is None:
            specials[name] = None
        elif _content(value) in added:  # keep the settings tokenizer.json gives it
            specials[name] = added[_content(value)]
        elif isinstance(value, dict):
            specials[name] = AddedToken(value["content"], single_word=value.get("single_word", False),
                                        lstrip=value.get("lstrip", False), rstrip=value.get("rstrip", False),
                                        normalized=value.get("normalized", False), special=True)
        else:  # RoBERTa's mask token absorbs the space before it, as in the released tokenizer
            lstrip = flavour == "roberta" and name == "mask_token"
            specials[name] = AddedToken(value, lstrip=lstrip, normalized=False, special=True)
    return specials


def _model_max_length(flavour: str | None, tok_config: dict, model_config: dict) -> int:
    value = tok_config.get("model_max_length")
    if isinstance(value, (int, float)) and value < UNSET_MAX_LENGTH:
        return int(value)
    from hone.models.checkpoint import CONFIG_CLASSES, config_from_dict  # models import data; not the reverse

    if model_config.get("model_type") in CONFIG_CLASSES:
        return config_from_dict(model_config).max_positions
    return FLAVOUR_MAX_LENGTH.get(flavour, 512)


# ---------------------------------------------------------------------------------------------
# small helpers


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TokenizerError(f"{file} is not valid JSON ({err}); restore it from the original checkpoint") from err


def _read_json_if_present(file: Path) -> dict:
    if not file.is_file():
        return {}
    data = _read_json(file)
    if not isinstance(data, dict):
        raise TokenizerError(f"{file} must hold a JSON object; restore it from the original checkpoint")
    return data


def _write_json(file: Path, data: Any) -> None:
    file.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _content(value: str | dict) -> str:
    return value["content"] if isinstance(value, dict) else value


def _added_contents(backend: Tokenizer) -> set[str]:
    return {tok.content for tok in backend.get_added_tokens_decoder().values()}


def _token_json(token: AddedToken) -> dict[str, Any]:
    return {"content": token.content, "lstrip": token.lstrip, "normalized": token.normalized,
            "rstrip": token.rstrip, "single_word": token.single_word, "special": token.special}


def _tokens_by_id(vocab: dict[str, int]) -> list[str]:
    tokens = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise TokenizerError("the WordPiece vocabulary has gaps in its ids, so it cannot be written as vocab.txt")
    return tokens
