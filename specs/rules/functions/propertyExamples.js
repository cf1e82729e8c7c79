// hangar-property-examples: a scalar leaf property (string, number, integer, boolean) carries
// an example, on itself or on the one schema it wraps with allOf. Objects and arrays are
// exemplified by their leaves. A one-value enum or a const is its own example.
import { isObject } from './lib/openapi.js';

const SCALARS = new Set(['string', 'number', 'integer', 'boolean']);

const exemplified = (schema) =>
  'example' in schema ||
  (Array.isArray(schema.examples) && schema.examples.length > 0) ||
  'const' in schema ||
  (Array.isArray(schema.enum) && schema.enum.length === 1);

export default (property, _options, context) => {
  if (!isObject(property)) return [];
  const wrapped = Array.isArray(property.allOf) && property.allOf.length === 1 && isObject(property.allOf[0]) ? property.allOf[0] : undefined;
  let type = property.type ?? wrapped?.type;
  if (Array.isArray(type)) type = type.filter((t) => t !== 'null').length === 1 ? type.find((t) => t !== 'null') : undefined;
  if (!SCALARS.has(type)) return [];
  if (exemplified(property) || (wrapped && exemplified(wrapped))) return [];
  const name = context.path[context.path.length - 1];
  return [{ message: `Property "${name}" (${type}) has no example.` }];
};
