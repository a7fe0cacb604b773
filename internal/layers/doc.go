// Package layers holds, in its test, which of Pampa's packages may import
// which: a slip across a layer fails CI instead of waiting for a review.
package layers
