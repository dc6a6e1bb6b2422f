"""Every path that builds a prompt checks that it fits the text encoder's 77 tokens (issue 18.7).

The tokenizer cuts a longer prompt silently (the class name or EOT lost); each path refuses it
with the class name's token count, the context's, the limit, and advice that helps: fewer
context tokens where that can make it fit, a shorter class name where it cannot.
"""
import types

import pytest
import torch
import torch.nn as nn

from trainers.backbone import ClipBackbone, load_clip
from trainers.cocoop import CoCoOpPromptLearner
from trainers.coop import CoOpPromptLearner
from trainers.deep_prompting import DeepPromptCLIP
from trainers.maple import MaPLePromptLearner
from trainers.prompting import ClassPromptTemplate, PromptTooLongError, token_count
from trainers.zsclip import ZeroshotCLIP


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return ClipBackbone(load_clip("gatescope-tiny", ""))


def words(n):
    """A class name of exactly n BPE tokens ("a" is one token)."""
    return " ".join(["a"] * n)


def test_the_words_used_here_are_one_token_each(backbone):
    assert token_count(backbone, words(80)) == 80 and token_count(backbone, "square") == 1


def test_a_class_name_too_long_by_itself_is_not_blamed_on_the_context(backbone):
    # N_CTX 0: SOS + 80 name tokens + "." + EOT = 83 > 77. Fewer context tokens cannot help.
    with pytest.raises(PromptTooLongError) as caught:
        CoOpPromptLearner(backbone, ["square", words(80)], n_ctx=0)
    message = str(caught.value)
    assert "is 83 tokens, more than the text encoder's context length of 77" in message
    assert "the class name is 80 tokens" in message
    assert "shorten it to at most 74 tokens" in message and "cannot make it fit" in message
    assert "use fewer context tokens" not in message.lower()


def test_a_long_context_is_told_how_many_tokens_fit(backbone):
    # 60 context + 20 name + 3 = 83: N_CTX 54 fits (54 + 20 + 3 = 77).
    with pytest.raises(PromptTooLongError, match=r"the class name is 20 tokens, the learned context 60 "
                                                 r"\(TRAINER.COCOOP.N_CTX\).*Use TRAINER.COCOOP.N_CTX 54 or less, or "
                                                 r"shorten the class name to at most 14 tokens"):
        CoCoOpPromptLearner(backbone, ["square", words(20)], n_ctx=60)
    CoCoOpPromptLearner(backbone, ["square", words(20)], n_ctx=54)


def test_a_prompt_of_exactly_the_context_length_fits(backbone):
    # SOS + 4 context + 70 name + "." + EOT = 77: nothing is cut, so it is accepted.
    template = ClassPromptTemplate(backbone, [words(70), "square"], 4)
    assert int(template.eot_idx[0]) == 76
    with pytest.raises(PromptTooLongError, match="is 78 tokens"):
        ClassPromptTemplate(backbone, [words(71), "square"], 4)


def test_maples_init_words_stay_in_the_prompt_so_the_advice_is_about_the_class_name(backbone):
    # "a photo of a" stays in the prompt whatever N_CTX is: N_CTX is not the fix.
    with pytest.raises(PromptTooLongError, match=r"the template's words and the start and end tokens 7\. Shorten the "
                                                 r"class name to at most 70 tokens") as caught:
        MaPLePromptLearner(backbone, ["square", words(72)], n_ctx=2, ctx_init="a photo of a", depth=1)
    assert "N_CTX" not in str(caught.value)


def test_vpts_fixed_prompt_is_checked_instead_of_cut(backbone):
    # VPT (and IVLP without text prompts) encode "a photo of a {}." once; the tokenizer would cut it.
    with pytest.raises(PromptTooLongError, match=r'the prompt "a photo of a \{\}\." for class "a a .*" is 82 tokens.*'
                                                 r"the class name is 75 tokens.*at most 70 tokens"):
        DeepPromptCLIP(nn.Identity(), backbone, ["square", words(75)], "a photo of a {}.")
    DeepPromptCLIP(nn.Identity(), backbone, ["square", words(70)], "a photo of a {}.")


def test_zero_shot_templates_are_checked(backbone):
    fake = types.SimpleNamespace(templates=lambda: ["a photo of a {}, a type of pet."])
    with pytest.raises(PromptTooLongError, match=r"a type of pet.*the class name is 70 tokens"):
        ZeroshotCLIP.class_text_features(fake, backbone, ["square", words(70)])
