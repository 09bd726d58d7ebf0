// The JS `ollama` and `openai` clients against a running `toolkit serve`, as their users call them.
// Usage: node .ci/node/clients.mjs URL MODEL MAX_TOKENS TEXT; prints one JSON object of what came
// back, which tests/test_serve_clients.py compares with the server's own routes.
import { Ollama } from "ollama";
import OpenAI from "openai";

const [url, model, cap, text] = process.argv.slice(2);
const maxTokens = Number(cap);
const ollama = new Ollama({ host: url });
const openai = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused" });
const ask = [{ role: "user", content: "Why is the sky blue?" }];

const out = {};
out.ollama_chat = (await ollama.chat({ model, messages: ask, options: { num_predict: maxTokens, temperature: 0 } })).message.content;
let streamed = "";
for await (const part of await ollama.generate({ model, prompt: "Why is the sky blue?", stream: true, options: { num_predict: maxTokens } })) {
  streamed += part.response;
}
out.ollama_generate_stream = streamed;
out.ollama_embed = (await ollama.embed({ model, input: text })).embeddings[0];

out.openai_chat = (await openai.chat.completions.create({ model, messages: ask, max_tokens: maxTokens, temperature: 0 })).choices[0].message.content;
out.openai_embedding = (await openai.embeddings.create({ model, input: text })).data[0].embedding; // base64 on the wire by default
const response = await openai.responses.create({ model, input: "Why is the sky blue?", max_output_tokens: maxTokens, temperature: 0 });
out.responses_text = response.output_text;
const types = [];
let deltas = "";
for await (const event of await openai.responses.create({ model, input: "Why is the sky blue?", max_output_tokens: maxTokens, temperature: 0, stream: true })) {
  types.push(event.type);
  if (event.type === "response.output_text.delta") deltas += event.delta;
}
out.responses_stream_types = types;
out.responses_stream_text = deltas;
console.log(JSON.stringify(out));
