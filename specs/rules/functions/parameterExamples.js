// hangar-parameter-examples: every parameter carries an example (on itself or its schema):
// the docs, the CLI's usage text and the contract tests' seeds come from it.
import { effectiveParameters, isObject, label, operationsOf, routeOf } from './lib/openapi.js';

const hasExample = (param) =>
  'example' in param ||
  (isObject(param.examples) && Object.keys(param.examples).length > 0) ||
  (isObject(param.schema) && 'example' in param.schema);

export default (pathItem, _options, context) => {
  const results = [];
  const route = routeOf(context.path);
  const reported = new Set();
  for (const { method, op, path } of operationsOf(pathItem, context.path)) {
    for (const { param, path: paramPath } of effectiveParameters(pathItem, context.path, op, path)) {
      const key = paramPath.join('\u0000');
      if (hasExample(param) || reported.has(key)) continue;
      reported.add(key); // a path-level parameter is shared: report it once
      results.push({ message: `${label(method, route)}: parameter "${param.name}" (${param.in}) has no example.`, path: paramPath });
    }
  }
  return results;
};
