// hangar-event-binding: every channel is bound to the AMQP topic exchange the relay publishes
// to, with the channel address as routing key (architecture.md, "Events").
import { isObject } from './lib/asyncapi.js';

export default (channel, options, context) => {
  const name = context.path[context.path.length - 1];
  const amqp = isObject(channel.bindings) ? channel.bindings.amqp : undefined;
  const exchange = isObject(amqp) ? amqp.exchange : undefined;
  if (!isObject(amqp) || amqp.is !== 'routingKey' || !isObject(exchange) || exchange.name !== options.exchange || exchange.type !== 'topic') {
    return [{
      message: `Channel "${name}" must have an amqp binding (is: routingKey) to the topic exchange "${options.exchange}".`,
      path: [...context.path, ...(isObject(channel.bindings) ? ['bindings'] : [])],
    }];
  }
  return [];
};
