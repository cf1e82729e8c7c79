// hangar-event-envelope: every message payload is the outbox envelope
// {id, type, occurred_at, organization_id, data} (architecture.md, "Events"), closed
// (additionalProperties: false), with `type` pinned to the message's name so a consumer can
// trust the type it dispatches on.
import { isObject, messagesOf, pinnedValue } from './lib/asyncapi.js';

export default (channel, options, context) => {
  const results = [];
  for (const { key, message, path } of messagesOf(channel, context.path)) {
    const payload = message.payload;
    const where = `Message "${key}"`;
    if (!isObject(payload) || payload.type !== 'object' || !isObject(payload.properties)) {
      results.push({ message: `${where}: payload must be an object schema (the event envelope).`, path });
      continue;
    }
    if (payload.additionalProperties !== false) {
      results.push({ message: `${where}: the envelope must be closed (additionalProperties: false).`, path: [...path, 'payload'] });
    }
    const required = Array.isArray(payload.required) ? payload.required : [];
    const missing = options.fields.filter((field) => !(field in payload.properties) || !required.includes(field));
    if (missing.length) {
      results.push({ message: `${where}: envelope field(s) ${missing.join(', ')} missing or not required.`, path: [...path, 'payload'] });
    }
    const pinned = pinnedValue(payload.properties.type);
    if ('type' in payload.properties && pinned !== message.name) {
      results.push({ message: `${where}: envelope \`type\` must be pinned (enum of one or const) to the message name "${message.name}".`, path: [...path, 'payload', 'properties', 'type'] });
    }
    if ('data' in payload.properties && !(isObject(payload.properties.data) && payload.properties.data.type === 'object')) {
      results.push({ message: `${where}: envelope \`data\` must be an object schema.`, path: [...path, 'payload', 'properties', 'data'] });
    }
  }
  return results;
};
