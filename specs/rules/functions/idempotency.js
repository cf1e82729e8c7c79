// hangar-idempotent-create: a create POST (one that answers 201) is retried safely only if
// it is marked `x-idempotency: true` and accepts the Idempotency-Key header; and whatever is
// marked idempotent must accept the header, or the SDK cannot send the key it promises.
import { effectiveParameters, hasParameter, label, operationsOf, responsesOf, routeOf } from './lib/openapi.js';

export default (pathItem, options, context) => {
  const results = [];
  const route = routeOf(context.path);
  const header = options.header;
  for (const { method, op, path } of operationsOf(pathItem, context.path)) {
    const creates = method === 'post' && '201' in responsesOf(op);
    const marked = op['x-idempotency'] === true;
    if (creates && !marked) {
      results.push({ message: `${label(method, route)} creates (201) but is not marked \`x-idempotency: true\`.`, path });
    }
    if ((creates || marked) && !hasParameter(effectiveParameters(pathItem, context.path, op, path), header, 'header')) {
      results.push({ message: `${label(method, route)} must accept the ${header} header parameter.`, path });
    }
  }
  return results;
};
