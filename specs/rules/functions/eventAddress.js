// hangar-event-address: a channel's address is `<context>.<entity>.<verb>`, the AMQP routing
// key consumers bind to, and each message's `name` is the event type `<entity>.<verb>` that
// handlers pass to ctx.emit() and that the outbox writes into the envelope; the address must
// be the context followed by that type, so the relay can route by type alone.
import { messagesOf } from './lib/asyncapi.js';

const EVENT_TYPE = /^[a-z_]+\.[a-z_]+$/;

export default (channel, options, context) => {
  const results = [];
  const name = context.path[context.path.length - 1];
  const address = channel.address;
  const contexts = options.contexts.join('|');
  if (typeof address !== 'string' || !new RegExp(`^(${contexts})\\.[a-z_]+\\.[a-z_]+$`).test(address)) {
    results.push({
      message: `Channel "${name}": address ${JSON.stringify(address)} is not <context>.<entity>.<verb> with a known context (${options.contexts.join(', ')}).`,
      path: [...context.path, 'address'],
    });
    return results;
  }
  const boundedContext = address.split('.')[0];
  for (const { key, message, path } of messagesOf(channel, context.path)) {
    if (typeof message.name !== 'string' || !EVENT_TYPE.test(message.name)) {
      results.push({ message: `Message "${key}": name ${JSON.stringify(message.name)} is not an event type like api_key.created.`, path });
    } else if (`${boundedContext}.${message.name}` !== address) {
      results.push({ message: `Message "${key}" (${message.name}) is on channel address "${address}", expected "${boundedContext}.${message.name}".`, path });
    }
  }
  return results;
};
