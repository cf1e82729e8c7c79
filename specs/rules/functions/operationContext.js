// hangar-operation-context: every operation names its bounded context in `x-context`; the
// value is the package under handlers/ that implements it, so it must be a known context.
// When the operation's tag declares an `x-context` too, the two must agree.
import { allOperations, isObject, label } from './lib/openapi.js';

export default (doc, options, context) => {
  const known = new Set(options.contexts);
  const tagContext = new Map(
    (Array.isArray(doc.tags) ? doc.tags : []).filter(isObject).map((tag) => [tag.name, tag['x-context']]),
  );
  const results = [];
  for (const { method, route, op, path } of allOperations(doc, context.path)) {
    const name = op['x-context'];
    if (typeof name !== 'string' || name === '') {
      results.push({ message: `${label(method, route)} has no \`x-context\` (one of: ${options.contexts.join(', ')}).`, path });
      continue;
    }
    if (!known.has(name)) {
      results.push({ message: `${label(method, route)}: x-context "${name}" is not a bounded context (one of: ${options.contexts.join(', ')}).`, path: [...path, 'x-context'] });
      continue;
    }
    const tag = Array.isArray(op.tags) ? op.tags[0] : undefined;
    const expected = tagContext.get(tag);
    if (typeof expected === 'string' && expected !== name) {
      results.push({ message: `${label(method, route)}: x-context "${name}" differs from its tag "${tag}" (x-context "${expected}").`, path: [...path, 'x-context'] });
    }
  }
  return results;
};
