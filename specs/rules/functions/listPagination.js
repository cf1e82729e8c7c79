// hangar-list-pagination: a list operation (a GET whose success body is an object with a
// `data` array) is cursor-paged: it takes `limit` and `cursor` query parameters and returns
// `next_cursor`. The SDK and CLI page through lists by exactly these names.
import { effectiveParameters, hasParameter, isObject, jsonSchemaOf, label, operationsOf, responsesOf, routeOf } from './lib/openapi.js';

export default (pathItem, _options, context) => {
  const results = [];
  const route = routeOf(context.path);
  for (const { method, op, path } of operationsOf(pathItem, context.path)) {
    if (method !== 'get') continue;
    for (const [code, response] of Object.entries(responsesOf(op))) {
      if (!/^2/.test(code)) continue;
      const schema = jsonSchemaOf(response);
      const props = isObject(schema) && isObject(schema.properties) ? schema.properties : undefined;
      if (!props || !isObject(props.data) || props.data.type !== 'array') continue;
      const params = effectiveParameters(pathItem, context.path, op, path);
      const missing = ['limit', 'cursor'].filter((name) => !hasParameter(params, name, 'query'));
      if (missing.length) {
        results.push({ message: `${label(method, route)} lists \`data\` but lacks query parameter(s) ${missing.join(', ')}.`, path });
      }
      if (!('next_cursor' in props)) {
        results.push({ message: `${label(method, route)} lists \`data\` but its ${code} body has no \`next_cursor\`.`, path: [...path, 'responses', code] });
      }
    }
  }
  return results;
};
