// Helpers shared by the AsyncAPI house-rule functions (AsyncAPI 3, resolved document).
export { isObject } from './openapi.js';
import { isObject } from './openapi.js';

// Yields {key, message, path} for each message of a channel ("$.channels[*]").
export function* messagesOf(channel, channelPath) {
  if (!isObject(channel) || !isObject(channel.messages)) return;
  for (const [key, message] of Object.entries(channel.messages)) {
    if (isObject(message)) yield { key, message, path: [...channelPath, 'messages', key] };
  }
}

// The value an envelope's `type` property pins: `const`, or a one-value `enum`.
export function pinnedValue(schema) {
  if (!isObject(schema)) return undefined;
  if ('const' in schema) return schema.const;
  if (Array.isArray(schema.enum) && schema.enum.length === 1) return schema.enum[0];
  return undefined;
}
