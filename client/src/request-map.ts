/**
 * Types that tie a request type's name to its payload, result and chunk types.
 *
 * `TaskgateRequestMap` is empty here. `taskgate-codegen` writes a module that augments it
 * from the host's plugins (`taskgate schemas`); once that module is part of a program,
 * `makeBackendRequest("text.wordcount", { text: 5 })` no longer compiles and the result is
 * typed. Request types that are not in the map still work, through explicit generics:
 * `request<Payload, Result, Chunk>("my.type", payload)`.
 */

/** One request type's types. `chunk` is `never` for a type that does not stream. */
export interface RequestTypeSpec {
  payload: unknown;
  result: unknown;
  chunk: unknown;
}

/**
 * Request type → `{ payload, result, chunk }`. Augmented by generated code:
 *
 * ```ts
 * declare module '@taskgate/client' {
 *   interface TaskgateRequestMap { 'text.wordcount': { payload: …; result: …; chunk: never } }
 * }
 * ```
 */
// eslint-disable-next-line @typescript-eslint/no-empty-interface, @typescript-eslint/no-empty-object-type
export interface TaskgateRequestMap {}

/** The request types the program knows the types of (none without generated code). */
export type KnownRequestType = keyof TaskgateRequestMap & string;

type SpecOf<K extends KnownRequestType> = TaskgateRequestMap[K] extends RequestTypeSpec
  ? TaskgateRequestMap[K]
  : RequestTypeSpec;

export type PayloadOf<K extends KnownRequestType> = SpecOf<K>['payload'];
export type ResultOf<K extends KnownRequestType> = SpecOf<K>['result'];
export type ChunkOf<K extends KnownRequestType> = SpecOf<K>['chunk'];

/**
 * Type-level options, set by generated code. `taskgate-codegen --strict` declares
 * `interface TaskgateTypeOptions { strict: true }`: the request map is then closed, and a
 * request type that is not in it (a typo, a type the host does not serve) does not compile,
 * explicit generics included.
 */
// eslint-disable-next-line @typescript-eslint/no-empty-interface, @typescript-eslint/no-empty-object-type
export interface TaskgateTypeOptions {}

/** Whether the generated module closed the request map (`taskgate-codegen --strict`). */
export type IsStrict = TaskgateTypeOptions extends { strict: true } ? true : false;

/**
 * A request type name that is NOT in the map: the generic (untyped) overloads accept only
 * these, so a known type with a wrong payload cannot slip through them. What they accept
 * instead is a sentence, so that the compiler's error about the generic overload says why
 * (rather than "not assignable to `never`"): the real mistake is in the other overload's error.
 */
export type UnknownRequestType<T extends string> = IsStrict extends true
  ? `${T}: strict mode (taskgate-codegen --strict) takes only the generated request types; see the other overload's error`
  : T extends KnownRequestType
    ? `${T} has generated types; see the other overload's error`
    : T;
