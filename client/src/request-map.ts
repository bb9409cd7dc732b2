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
 * A request type name that is NOT in the map: the generic (untyped) overloads accept only
 * these, so a known type with a wrong payload cannot slip through them.
 */
export type UnknownRequestType<T extends string> = T extends KnownRequestType ? never : T;
