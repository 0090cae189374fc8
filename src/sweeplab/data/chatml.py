"""ChatML tokens and template shared by the embedded tokenizer and the data pipeline."""

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"
EOS = "<|endoftext|>"
SPECIAL_TOKENS = [PAD, EOS, IM_START, IM_END]

# `{% generation %}` marks what the model should learn to write, so
# apply_chat_template(..., return_assistant_tokens_mask=True) yields assistant-only labels.
# The assistant's <|im_end|> is inside the block: the model must learn to stop.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
