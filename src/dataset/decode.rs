//! Recognising and decoding image files safely.
//!
//! **Images are recognised by content, not by extension.** When a dataset is listed, the first
//! bytes of every file are read and matched against the known signatures (`image::guess_format`):
//! a `.jpg` that is really an HTML error page is skipped as "not an image", and a photo without
//! an extension is still used. The price is one small read per file, which listing pays anyway
//! to learn sizes and times for the fingerprint. Formats decoded: JPEG, PNG, WebP, BMP, GIF
//! (first frame); other recognised formats (TIFF, ...) are skipped as unsupported.
//!
//! **Truncation is caught.** Most decoders fail on a cut-off file by themselves; the JPEG one
//! fills the missing part with grey instead, so a JPEG whose last scan has no end-of-image
//! marker is rejected before decoding (a half-copied photo must not become a grey-bottomed
//! training image).
//!
//! **Decoding is bounded.** The header is read first and an image declaring more than
//! `max_pixels` pixels is refused before its buffer exists; the decoder's own allocation limit
//! is set from the same cap. Grey, grey+alpha, palette and RGBA images become RGB the way
//! Pillow's `convert('RGB')` does it: grey is copied to the three channels, alpha is dropped,
//! palettes are expanded. EXIF orientation is not applied (neither Pillow's `open` nor
//! torchvision applies it), so features match the reference.

use std::fs::File;
use std::io::{self, Cursor, Read};
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};

use super::skip::SkipReason;
use crate::Error;

/// How many leading bytes are enough to recognise every supported format.
const SNIFF_LEN: usize = 32;

/// Why an image could not be decoded: an I/O failure on the path, or a reason to skip it.
#[derive(Debug)]
pub(crate) enum DecodeFailure {
    /// Opening or reading the file failed.
    Io(io::Error),
    /// The file was read but cannot be used.
    Skip(SkipReason),
}

impl DecodeFailure {
    /// As a library error naming `path`.
    pub(crate) fn into_error(self, path: &Path) -> Error {
        match self {
            DecodeFailure::Io(e) => Error::io(path, e),
            DecodeFailure::Skip(reason) => Error::invalid(path, reason.to_string()),
        }
    }

    /// As a reason to skip the file.
    pub(crate) fn into_reason(self) -> SkipReason {
        match self {
            DecodeFailure::Io(e) => SkipReason::Unreadable(e.to_string()),
            DecodeFailure::Skip(reason) => reason,
        }
    }
}

/// True for the formats this build decodes.
fn supported(format: ImageFormat) -> bool {
    matches!(
        format,
        ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::WebP
            | ImageFormat::Bmp
            | ImageFormat::Gif
    ) && format.reading_enabled()
}

/// Recognises an image by its first bytes; `Err` is the reason to skip the file.
pub(crate) fn sniff(path: &Path) -> Result<ImageFormat, SkipReason> {
    let mut head = Vec::with_capacity(SNIFF_LEN);
    let read = File::open(path).and_then(|f| f.take(SNIFF_LEN as u64).read_to_end(&mut head));
    match read {
        Err(e) => Err(SkipReason::Unreadable(e.to_string())),
        Ok(0) => Err(SkipReason::EmptyFile),
        Ok(_) => match image::guess_format(&head) {
            Ok(format) if supported(format) => Ok(format),
            Ok(format) => Err(SkipReason::UnsupportedFormat(format!("{format:?}"))),
            Err(_) => Err(SkipReason::NotAnImage),
        },
    }
}

/// Turns a decoder error into a skip reason (or an I/O failure).
fn classify(e: ImageError) -> DecodeFailure {
    match e {
        ImageError::IoError(io) if io.kind() == io::ErrorKind::UnexpectedEof => {
            DecodeFailure::Skip(SkipReason::Corrupt(format!("truncated ({io})")))
        }
        ImageError::IoError(io) => DecodeFailure::Io(io),
        ImageError::Unsupported(u) => {
            DecodeFailure::Skip(SkipReason::UnsupportedFormat(u.to_string()))
        }
        other => DecodeFailure::Skip(SkipReason::Corrupt(other.to_string())),
    }
}

/// True unless a JPEG stream visibly stops before its end: the last start-of-scan marker
/// (`FF DA`) must be followed by an end-of-image marker (`FF D9`).
///
/// The JPEG decoder is lenient: a half-copied JPEG decodes "successfully" with its lower part
/// filled in grey, which would feed the probe a wrong image without a word. Inside
/// entropy-coded data every `FF` byte is stuffed (`FF 00`) or a restart marker, so both markers
/// are unambiguous there; an EXIF thumbnail's own markers come before the main scan.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_sos {
        Some(at) => bytes[at..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => true, // no scan at all: the decoder reports that itself
    }
}

/// Decodes the image file at `path` into 8-bit RGB, refusing images above `max_pixels`.
pub(crate) fn decode_rgb(path: &Path, max_pixels: u64) -> Result<RgbImage, DecodeFailure> {
    // Image files are read whole: they are compressed, so small next to their pixels, and the
    // JPEG completeness check needs the bytes anyway.
    let bytes = std::fs::read(path).map_err(DecodeFailure::Io)?;
    let format = match image::guess_format(&bytes) {
        Ok(f) if supported(f) => f,
        Ok(f) => {
            return Err(DecodeFailure::Skip(SkipReason::UnsupportedFormat(format!(
                "{f:?}"
            ))))
        }
        Err(_) if bytes.is_empty() => return Err(DecodeFailure::Skip(SkipReason::EmptyFile)),
        Err(_) => return Err(DecodeFailure::Skip(SkipReason::NotAnImage)),
    };
    if format == ImageFormat::Jpeg && !jpeg_is_complete(&bytes) {
        return Err(DecodeFailure::Skip(SkipReason::Corrupt(
            "truncated JPEG (no end-of-image marker)".into(),
        )));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes.as_slice()), format);
    let mut limits = Limits::default();
    // The largest buffer a decoder legitimately needs: 16-bit RGBA (8 bytes a pixel) at the
    // cap, plus room for its working tables.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(classify)?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(DecodeFailure::Skip(SkipReason::TooManyPixels {
            width,
            height,
            cap: max_pixels,
        }));
    }
    let img = DynamicImage::from_decoder(decoder).map_err(classify)?;
    Ok(to_rgb(img))
}

/// Pillow's `convert('RGB')` for the layouts the decoders produce.
fn to_rgb(img: DynamicImage) -> RgbImage {
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    }
}

/// An RGB image from a grey one (row-major bytes), each grey level copied to R, G and B.
pub(crate) fn grey_to_rgb(width: u32, height: u32, grey: &[u8]) -> RgbImage {
    let rgb: Vec<u8> = grey.iter().flat_map(|&g| [g, g, g]).collect();
    RgbImage::from_raw(width, height, rgb).unwrap_or_else(|| RgbImage::new(width, height))
}

/// Decodes one image file as 8-bit RGB, refusing images over `max_pixels` (width × height)
/// before allocating them. Any failure is an [`Error`] naming the file and what is wrong.
pub fn load_image(path: &Path, max_pixels: u64) -> crate::Result<RgbImage> {
    decode_rgb(path, max_pixels).map_err(|f| f.into_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jpeg_completeness_looks_for_eoi_after_the_last_scan() {
        // SOI, a thumbnail's scan and EOI inside APP1, then the main scan.
        let thumb = [
            0xFF, 0xD8, 0xFF, 0xE1, 0xFF, 0xDA, 1, 2, 0xFF, 0xD9, 0xFF, 0xDA, 3, 0xFF, 0x00, 4,
        ];
        assert!(!jpeg_is_complete(&thumb), "main scan has no EOI");
        let mut whole = thumb.to_vec();
        whole.extend_from_slice(&[0xFF, 0xD9, 0, 0]); // trailing padding is fine
        assert!(jpeg_is_complete(&whole));
        assert!(
            jpeg_is_complete(&[0xFF, 0xD8, 0xFF, 0xE0]),
            "no scan: left to the decoder"
        );
    }
}
