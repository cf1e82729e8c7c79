// hangar-event-examples: every message has at least one example with a payload, and each
// example validates against the message's payload schema. (spectral:asyncapi validates
// examples only for AsyncAPI 2; this is the AsyncAPI 3 counterpart.)
import { schema } from '@stoplight/spectral-functions';
import { isObject, messagesOf } from './lib/asyncapi.js';

export default (channel, _options, context) => {
  const results = [];
  for (const { key, message, path } of messagesOf(channel, context.path)) {
    const examples = Array.isArray(message.examples) ? message.examples : [];
    if (examples.length === 0) {
      results.push({ message: `Message "${key}" has no examples.`, path });
      continue;
    }
    examples.forEach((example, i) => {
      const examplePath = [...path, 'examples', i];
      if (!isObject(example) || !('payload' in example)) {
        results.push({ message: `Message "${key}": example ${i} has no payload.`, path: examplePath });
        return;
      }
      if (!isObject(message.payload)) return;
      const found = schema(example.payload, { schema: message.payload, allErrors: true }, { ...context, path: [...examplePath, 'payload'] });
      for (const result of found ?? []) {
        results.push({ ...result, message: `Message "${key}", example ${i}: ${result.message}` });
      }
    });
  }
  return results;
};
